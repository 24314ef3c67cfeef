from setuptools import setup

# Everything lives in setup.cfg; setup.py stays for tools and users that call it directly.
setup()
