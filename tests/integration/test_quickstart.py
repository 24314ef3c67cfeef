"""`python -m tftrt.quickstart` (the README's main job) passes."""

import re
import subprocess
import sys


def test_quickstart_main_job(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tftrt.quickstart", "--runs", "3",
                           "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS" in proc.stdout
    # the main job uses the API as we advise it (it passed conversion_params, which warns
    # "deprecated" since 2026-12-04)
    assert "deprecated" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert "[*] Total number of TensorRT engines:" in proc.stdout
    assert "engines rebuilt on load: 0" in proc.stdout
    # the loaded model's call ran its engines, not the native segments
    runs = re.search(r"engine runs: (\d+), native segment runs: (\d+)", proc.stdout)
    assert runs, proc.stdout[-3000:]
    assert int(runs.group(1)) >= 1 and int(runs.group(2)) == 0, runs.group(0)
