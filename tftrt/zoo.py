"""Reference Keras models (seeded, weights=None) used by the GPU tests and the benchmarks.

    resnet50(input_size=224), mobilenet_v2(input_size=224): Keras applications returning
      logits, with random batch-norm statistics (freshly initialised, MobileNetV2's softmax
      output is exactly uniform and ResNet50's nearly so: comparing those checks nothing).
    encoder(layers=12, hidden=768, heads=12, seq=128): a BERT-base-sized transformer encoder
      built from Keras layers (MultiHeadAttention, LayerNormalization, Dense with GELU), taking
      float embeddings [batch, seq, hidden].
"""

from __future__ import annotations

from typing import Tuple


def randomize_batchnorm(model, seed: int = 0):
    """Gives every BatchNormalization layer random (plausible) gamma, beta and statistics."""
    import keras
    import numpy as np
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0, 0.1, c).astype("float32"))
    return model


def _application(cls, input_size: int, seed: int):
    import keras
    keras.utils.set_random_seed(seed)
    model = cls(weights=None, input_shape=(input_size, input_size, 3),
                classifier_activation=None)
    return randomize_batchnorm(model, seed)


def resnet50(input_size: int = 224, seed: int = 0):
    import keras
    return _application(keras.applications.ResNet50, input_size, seed)


def mobilenet_v2(input_size: int = 224, seed: int = 0):
    import keras
    return _application(keras.applications.MobileNetV2, input_size, seed)


def inception_v3(input_size: int = 299, seed: int = 0):
    import keras
    return _application(keras.applications.InceptionV3, input_size, seed)


def vgg16(input_size: int = 224, seed: int = 0):
    import keras
    return _application(keras.applications.VGG16, input_size, seed)


def encoder(layers: int = 12, hidden: int = 768, heads: int = 12, seq: int = 128,
            ffn: int = 3072, seed: int = 0):
    import keras
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((seq, hidden), name="embeddings")
    x = inp
    for i in range(layers):
        att = L.MultiHeadAttention(heads, hidden // heads, name=f"att{i}")(x, x)
        x = L.LayerNormalization(epsilon=1e-12, name=f"ln_att{i}")(x + att)
        h = L.Dense(ffn, activation="gelu", name=f"ffn_in{i}")(x)
        h = L.Dense(hidden, name=f"ffn_out{i}")(h)
        x = L.LayerNormalization(epsilon=1e-12, name=f"ln_ffn{i}")(x + h)
    return keras.Model(inp, x, name="encoder")


MODELS = {
    "resnet50": (resnet50, lambda b, s=224: (b, s, s, 3)),
    "mobilenet_v2": (mobilenet_v2, lambda b, s=224: (b, s, s, 3)),
    "encoder": (encoder, lambda b, s=128: (b, s, 768)),
}


def input_shape(name: str, batch: int, size: int = None) -> Tuple[int, ...]:
    shape_fn = MODELS[name][1]
    return shape_fn(batch) if size is None else shape_fn(batch, size)
