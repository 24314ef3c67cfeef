"""Serving SavedModels that carry their preprocessing (preprocessing hunt, 2026-12-06): Keras
preprocessing layers, image bytes decoded in the signature, ragged / sparse intermediates,
tf.Example parsing, string outputs and asset files, each through convert() -> build() ->
save() -> tftrt.load() and plain TF in a fresh process, compared with native TF. No tftrt
difference was found; lookup tables (Keras StringLookup / IntegerLookup / TextVectorization,
tf.lookup tables from a vocabulary file) are refused at convert() with the documented reason
(docs/differences.md), which these tests keep clear."""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as L

import tftrt
from tftrt import trt_convert as trt
from tests.integration.test_signature_hunt import assert_same, convert_everywhere

R = np.random.RandomState(0)


def _save(module, path, sig):
    tf.saved_model.save(module, path, signatures=sig)
    return path


class Tabular(tf.Module):
    """Adapted Normalization, Rescaling + Resizing of uint8 pixels, Hashing + CategoryEncoding
    of string tags, feeding one dense head; the hashed ids are an output too."""

    def __init__(self):
        self.norm = L.Normalization()
        self.norm.adapt(R.randn(50, 4).astype("f") * 3 + 1)
        self.resc, self.resize = L.Rescaling(1 / 127.5, offset=-1), L.Resizing(8, 8)
        self.conv, self.dense = L.Conv2D(4, 3, activation="relu"), L.Dense(3)
        self.hash = L.Hashing(num_bins=7)
        self.cat = L.CategoryEncoding(num_tokens=7, output_mode="multi_hot")
        self.conv(tf.zeros([1, 8, 8, 3]))
        self.dense(tf.zeros([1, 4 + 4 * 6 * 6 + 7]))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="num"),
                                  tf.TensorSpec([None, 12, 10, 3], tf.uint8, name="img"),
                                  tf.TensorSpec([None, 3], tf.string, name="tags")])
    def f(self, num, img, tags):
        n = self.norm(num)
        im = self.conv(self.resize(self.resc(tf.cast(img, tf.float32))))
        z = tf.concat([n, tf.reshape(im, [-1, 4 * 6 * 6]), self.cat(self.hash(tags))], 1)
        return {"logits": self.dense(z), "hashed": self.hash(tags), "n": n}


def test_keras_preprocessing_layers_in_the_signature(tmp_path):
    def feed(b):
        return {"num": R.randn(b, 4).astype("f"),
                "img": R.randint(0, 256, (b, 12, 10, 3)).astype(np.uint8),
                "tags": np.array([[b"a", b"bb", b"c%d" % i] for i in range(b)]).reshape(b, 3)}
    m = Tabular()
    src = _save(m, str(tmp_path / "src"), m.f)
    convert_everywhere(src, "serving_default", [feed(3), feed(1), feed(0)], tmp_path)


def test_a_keras_export_with_discretization_and_category_encoding(tmp_path):
    """model.export()'s serving_default of a functional model mixing float, int64 and string
    inputs (Discretization, CategoryEncoding multi_hot / count / one_hot, Hashing one_hot)."""
    num = keras.Input((4,), name="num")
    cat = keras.Input((2,), dtype="int64", name="cat")
    q = keras.Input((1,), dtype="string", name="q")
    norm = L.Normalization()
    norm.adapt(R.randn(100, 4).astype("f") * 5 + 2)
    disc = L.Discretization(bin_boundaries=[-1.0, 0.0, 1.5])
    h = L.concatenate([norm(num), L.CategoryEncoding(8, "multi_hot")(cat),
                       L.CategoryEncoding(8, "count")(cat),
                       L.CategoryEncoding(4, "one_hot")(disc(num[:, :1])),
                       L.Hashing(5, output_mode="one_hot")(q)])
    out = L.Dense(2, name="head")(L.Dense(16, activation="relu")(h))
    src = str(tmp_path / "src")
    keras.Model([num, cat, q], {"out": out, "d": disc(num)}).export(src, verbose=False)
    kw = {"num": R.randn(3, 4).astype("f"), "cat": np.array([[1, 1], [7, 0], [3, 5]]),
          "q": np.array([[b"x"], [b"y"], [b"x"]])}
    convert_everywhere(src, "serving_default", [kw, {k: v[:1] for k, v in kw.items()}],
                       tmp_path, plain=False)


class Resizes(tf.Module):
    """uint8 pixels through every resize method a serving model uses, then float math."""

    @tf.function(input_signature=[tf.TensorSpec([None, 13, 17, 3], tf.uint8, name="img")])
    def f(self, img):
        x = tf.cast(img, tf.float32)
        outs = {"bilinear": tf.image.resize(x, [8, 9]),
                "bilinear_up": tf.image.resize(x, [30, 20]),
                "nearest": tf.image.resize(x, [26, 40], "nearest"),
                "bicubic": tf.image.resize(x, [8, 9], "bicubic"),
                "area": tf.image.resize(x, [8, 9], "area"),
                "antialias": tf.image.resize(x, [8, 9], antialias=True),
                "align": tf.compat.v1.image.resize_bilinear(x, [8, 9], align_corners=True),
                "crop": L.Resizing(8, 8, crop_to_aspect_ratio=True)(x),
                "pad": L.Resizing(8, 8, pad_to_aspect_ratio=True)(x),
                "std": tf.image.per_image_standardization(x),
                "hsv": tf.image.rgb_to_hsv(x / 255.0) * 100.0}
        return {k: tf.nn.relu(v * 0.01 - 0.5) + 1.0 for k, v in outs.items()}


def test_image_resizes_and_colour_ops(tmp_path):
    m = Resizes()
    src = _save(m, str(tmp_path / "src"), m.f)
    img = R.randint(0, 256, (3, 13, 17, 3)).astype(np.uint8)
    convert_everywhere(src, "serving_default", [{"img": img}, {"img": img[:1]}], tmp_path,
                       plain=False)


class ImageBytes(tf.Module):
    """Encoded images (raw bytes, varying sizes) decoded in the signature, a small CNN, and
    the label as a string output (gathered from a constant, joined with the score)."""

    def __init__(self, fmt):
        self.fmt = fmt
        self.c1, self.c2 = L.Conv2D(8, 3, activation="relu"), L.Conv2D(4, 3, strides=2)
        self.d = L.Dense(3)
        self.d(tf.zeros([1, 4]))
        self.c2(self.c1(tf.zeros([1, 16, 16, 3])))
        self.labels = tf.constant(["cat", "dog", "bird"])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def f(self, b):
        def dec(s):
            decode = tf.io.decode_png if self.fmt == "png" else tf.io.decode_jpeg
            return tf.image.resize(tf.cast(decode(s, channels=3), tf.float32) / 255.0, [16, 16])
        x = tf.map_fn(dec, b, fn_output_signature=tf.TensorSpec([16, 16, 3], tf.float32))
        logits = self.d(tf.reduce_mean(self.c2(self.c1(x)), [1, 2]))
        label = tf.gather(self.labels, tf.argmax(logits, -1))
        score = tf.strings.as_string(tf.reduce_max(tf.nn.softmax(logits), -1), precision=3)
        return {"logits": logits, "label": label, "text": tf.strings.join([label, score], ":")}


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_decoded_image_bytes_feed_a_cnn(tmp_path, fmt):
    enc = tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg
    imgs = np.array([enc(tf.constant(R.randint(0, 256, (20 + i, 24, 3)).astype(np.uint8)))
                     .numpy() for i in range(3)], dtype=object)
    m = ImageBytes(fmt)
    src = _save(m, str(tmp_path / "src"), m.f)
    convert_everywhere(src, "serving_default", [{"image_bytes": imgs},
                                                {"image_bytes": imgs[:1]}],
                       tmp_path, plain=fmt == "png")


class Tokens(tf.Module):
    """Text cleaned and split (ragged), hashed, padded to_tensor, a masked mean of an
    embedding; ragged row lengths, a sparse count and string tokens as outputs."""

    def __init__(self):
        self.emb = tf.Variable(R.randn(64, 8).astype("f"), trainable=False)
        self.d = L.Dense(2)
        self.d(tf.zeros([1, 8]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def f(self, s):
        toks = tf.strings.split(tf.strings.lower(tf.strings.regex_replace(s, "[^a-zA-Z ]", "")))
        dense = (tf.strings.to_hash_bucket_fast(toks, 63) + 1).to_tensor(0, shape=[None, 6])
        mask = tf.cast(dense > 0, tf.float32)[..., None]
        h = tf.reduce_sum(tf.gather(self.emb, dense) * mask, 1) / tf.maximum(
            tf.reduce_sum(mask, 1), 1.0)
        return {"y": self.d(tf.nn.relu(h)), "n": toks.row_lengths(),
                "nnz": tf.size(tf.sparse.from_dense(dense).values),
                "first": toks.to_tensor(default_value="<pad>")[:, :1]}


def test_ragged_and_sparse_intermediates_with_string_outputs(tmp_path):
    m = Tokens()
    src = _save(m, str(tmp_path / "src"), m.f)
    kws = [{"text": np.array([b"The cat sat!", b"", b"a b c d e f g h"], dtype=object)},
           {"text": np.array([b"Hello world"], dtype=object)}]
    convert_everywhere(src, "serving_default", kws, tmp_path)


_SPEC = {"age": tf.io.FixedLenFeature([1], tf.float32, default_value=[30.0]),
         "vec": tf.io.FixedLenFeature([4], tf.float32),
         "tags": tf.io.VarLenFeature(tf.int64),
         "name": tf.io.FixedLenFeature([], tf.string, default_value="")}


class Parsing(tf.Module):
    """Serialized tf.Examples (dense, default-valued and var-len features), base64 float
    bytes and CSV lines parsed in the signature, a dense head, string outputs."""

    def __init__(self):
        self.d1, self.d2 = L.Dense(8, activation="relu"), L.Dense(2)
        self.d2(self.d1(tf.zeros([1, 17])))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples"),
                                  tf.TensorSpec([None], tf.string, name="b64"),
                                  tf.TensorSpec([None], tf.string, name="csv")])
    def f(self, ex, b64, csv):
        p = tf.io.parse_example(ex, _SPEC)
        multi = tf.reduce_max(tf.one_hot(tf.sparse.to_dense(p["tags"]), 4), 1)
        raw = tf.reshape(tf.io.decode_raw(tf.io.decode_base64(b64), tf.float32), [-1, 4])
        cols = tf.stack(tf.io.decode_csv(csv, [[0.0]] * 4), 1)
        z = tf.concat([p["age"] / 100.0, p["vec"], multi, raw, cols], 1)
        return {"y": self.d2(self.d1(z)), "name": tf.strings.upper(p["name"]),
                "ntags": tf.sparse.reduce_sum(tf.sparse.map_values(tf.ones_like, p["tags"]), 1),
                "s": tf.strings.reduce_join(tf.strings.as_string(cols, precision=2), 1,
                                            separator=",")}


def _example(i, tags, age=None):
    f = {"vec": tf.train.Feature(float_list=tf.train.FloatList(value=list(R.randn(4)))),
         "tags": tf.train.Feature(int64_list=tf.train.Int64List(value=tags)),
         "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"n%d" % i]))}
    if age is not None:
        f["age"] = tf.train.Feature(float_list=tf.train.FloatList(value=[age]))
    # deterministic: TF's parser refused some map orders of these (hash-seed dependent)
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString(
        deterministic=True)


def test_tf_example_base64_and_csv_parsing(tmp_path):
    import base64
    m = Parsing()
    src = _save(m, str(tmp_path / "src"), m.f)
    vals = R.randn(3, 4).astype("<f4")
    kw = {"examples": np.array([_example(0, [1, 2], 20.0), _example(1, [3], None),
                                _example(2, [3, 3, 0, 1], 55.0)], dtype=object),
          "b64": np.array([base64.urlsafe_b64encode(v.tobytes()) for v in vals], dtype=object),
          "csv": np.array([b"1,2,3,4", b"0.5,,1e3,-2", b"9,8,7,6"], dtype=object)}
    convert_everywhere(src, "serving_default", [kw, {k: v[:1] for k, v in kw.items()}],
                       tmp_path)


def _vec(path):
    return tf.strings.to_number(tf.strings.split(tf.strings.strip(tf.io.read_file(path)), " "))


class TwoAssets(tf.Module):
    """Two asset files of one basename (saved as scale.txt and scale.txt_1), one also read in
    a tf.cond branch and in a tf.function helper."""

    def __init__(self, a, b):
        self.a1, self.a2 = tf.saved_model.Asset(a), tf.saved_model.Asset(b)

    @tf.function
    def helper(self, x):
        return x * _vec(self.a2.asset_path)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([], tf.bool, name="p")])
    def f(self, x, p):
        h = tf.nn.relu(x * _vec(self.a1.asset_path) - 1.0) + 0.5
        c = tf.cond(p, lambda: h * _vec(self.a2.asset_path), lambda: h - 1.0)
        return {"y": c, "z": tf.tanh(self.helper(h)) * 2.0}


def test_assets_of_one_basename_read_in_branches_and_helpers(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "scale.txt").write_text("0.5 1.5 2.5 3.5\n")
    (tmp_path / "b" / "scale.txt").write_text("-1 2 -3 4\n")
    m = TwoAssets(str(tmp_path / "a" / "scale.txt"), str(tmp_path / "b" / "scale.txt"))
    src = _save(m, str(tmp_path / "src"), m.f)
    shutil.rmtree(tmp_path / "a")
    shutil.rmtree(tmp_path / "b")
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    kws = [{"x": x, "p": np.array(True)}, {"x": x[:1], "p": np.array(False)}]
    native = tf.saved_model.load(src).signatures["serving_default"]
    wants = [{k: v.numpy() for k, v in native(**kw).items()} for kw in kws]
    convert_everywhere(src, "serving_default", kws, tmp_path)
    assert sorted(os.listdir(tmp_path / "converted" / "assets")) == [
        "scale.txt", "scale.txt_1", "tftrt"]
    shutil.rmtree(src)
    moved = str(tmp_path / "moved")
    shutil.move(str(tmp_path / "converted"), moved)
    for model in (tftrt.load(moved), tf.saved_model.load(moved)):
        for kw, want in zip(kws, wants):
            got = model.signatures["serving_default"](**kw)
            assert_same({k: v.numpy() for k, v in got.items()}, want)


class Lookup(tf.Module):
    def __init__(self, layer, dtype=tf.string):
        self.layer, self.dtype = layer, dtype
        self.d = L.Dense(2)
        self.d(tf.zeros([1, 3]))

    @tf.function
    def __call__(self, tok):
        return {"y": self.d(tf.nn.relu(tf.cast(self.layer(tok), tf.float32))),
                "ids": self.layer(tok)}


class Table(tf.Module):
    def __init__(self, table):
        self.t = table
        self.w = tf.Variable(R.randn(12, 4).astype("f"), trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="tok")])
    def __call__(self, tok):
        ids = self.t.lookup(tok)
        return {"y": tf.tanh(tf.gather(self.w, tf.maximum(ids, 0)) * 2.0), "ids": ids}


def _lookup_models(vocab):
    words = ["the", "cat", "sat", "on", "mat"]
    init = tf.lookup.TextFileInitializer(vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                         tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
    text = L.TextVectorization(output_sequence_length=3, vocabulary=words)
    return {"string_lookup_list": lambda: Lookup(L.StringLookup(vocabulary=words)),
            "string_lookup_file": lambda: Lookup(L.StringLookup(vocabulary=vocab)),
            "integer_lookup": lambda: Lookup(L.IntegerLookup(vocabulary=[3, 7, 11]), tf.int64),
            "text_vectorization": lambda: Lookup(text),
            "vocabulary_table_file": lambda: Table(
                tf.lookup.StaticVocabularyTable(init, num_oov_buckets=3)),
            "hash_table_file": lambda: Table(tf.lookup.StaticHashTable(init, -1))}


@pytest.mark.parametrize("kind", ["string_lookup_list", "string_lookup_file", "integer_lookup",
                                  "text_vectorization", "vocabulary_table_file",
                                  "hash_table_file"])
def test_lookup_tables_are_refused_at_convert_with_the_reason(tmp_path, kind):
    """A table is a resource, not a variable: convert() refuses it (documented) with a
    ValueError saying what to do, not a KeyError or an importer error later."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("the\ncat\nsat\non\nmat\n")
    m = _lookup_models(str(vocab))[kind]()
    if isinstance(m, Lookup):
        shape = [None] if kind == "text_vectorization" else [None, 3]
        sig = m.__call__.get_concrete_function(tf.TensorSpec(shape, m.dtype, name="tok"))
    else:
        sig = m.__call__
    src = _save(m, str(tmp_path / "src"), sig)
    with pytest.raises(ValueError, match=r"captures 1 stateful object\(s\) that are not "
                                         r"variables .*Do the lookup outside the converted"):
        trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=1).convert()
