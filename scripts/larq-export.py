#!/usr/bin/env python3
"""Train a model with Larq itself (or load Keras weights) and save it as a Flip model file.

What it does
  1. Builds the model exactly as the Larq peer does: the model-building functions and the
     Fashion-MNIST reader are imported (not copied) from the peer's train.py
     (the Larq training script given by --larq-train). The training loop repeats train.py's:
     same thread settings, `tf.keras.utils.set_random_seed(seed)`, Adam(lr), a tf.data pipeline
     shuffled with the seed, one `model.fit` per epoch followed by `model.evaluate` on the test
     set. So `--model M --epochs 10 --seed 0` repeats train.py's run of M (checked: epoch 1 of
     binarynet-mlp gives train.py's losses and accuracies to every printed digit on the same
     machine; TensorFlow's results depend on the CPU, so compare runs on one machine).
     With --keras-weights FILE.h5 it skips training and loads the weights instead
     (`model.load_weights`; e.g. a file written by --save-keras-weights).
  2. Prints Larq's own `model.evaluate` test loss and accuracy (and the count of correct images).
  3. Writes --out as a Flip model file (format `flip-model`, version 2), the layout of
     Sources/FlipTraining/ModelFile.swift and SafeTensors.swift: the safetensors layout, tensors
     named `layers.<i>.<layer>.<role>` as Flip names them (per-type counters: quant_dense,
     quant_dense_1, ...), Keras's layouts (Dense [in, out], Conv2D [kh, kw, cin, cout]) which are
     Flip's. BatchNormalization with scale=False has no gamma in Keras nor in Flip, so every
     Keras variable maps 1:1 (kernel, beta, moving_mean, moving_variance). Metadata: `model`,
     `config`, `step`, `epoch`, `format`, `format_version`, `payload_crc32` (zlib CRC-32 of the
     data section) and `header_crc32` (CRC-32 of the sorted `key=value` lines of the other
     metadata, then one `name dtype [shape] begin end` line per tensor in name order, exactly as
     ModelFile.headerChecksum computes it).

The `config` metadata is a run config in the YAML of earlier Flip versions (sorted keys, every
layer written out, float parameters as Float32 widened to Double), which Flip still reads as a
model file's settings. It is emitted from the Keras model's own layer settings; for both presets
at --epochs 10 --seed 0 --batch-size 512 it describes the run `flip train --model M --epochs 10
--seed 0` trains (Flip now writes its settings as a `settings` entry, every key included).
--flip-config FILE uses the text of a Flip run's config.yaml (or of a Flip file's `config`
metadata) verbatim instead, and reports whether it equals the emitted text.

Run in a Python environment with numpy, tensorflow and larq (a Larq 0.14 / TensorFlow 2.15 venv)
    V=~/.cache/flip-peers/larq-venv/bin/python
    $V scripts/larq-export.py --model binarynet-mlp --epochs 10 --seed 0 \\
        --out /tmp/larq-export/binarynet-mlp-seed0.safetensors
    .build/release/flip checkpoint inspect /tmp/larq-export/binarynet-mlp-seed0.safetensors
    .build/release/flip evaluate --checkpoint /tmp/larq-export/binarynet-mlp-seed0.safetensors

Flags: --model binarynet-mlp|larq-cnn, --epochs (10), --batch-size (512), --seed (0), --lr (1e-3),
--data-dir (/usr/share/datasets/fashion-mnist), --keras-weights FILE.h5 (no training),
--save-keras-weights FILE.h5, --flip-config FILE, --agreement-data DIR, --larq-train PATH,
--intra-op-threads (2), --inter-op-threads (1), --out FILE (required). With --keras-weights the
file's `step` and `epoch` metadata are 0 (unknown); the config's `epochs` is --epochs.
--agreement-data DIR writes a data directory whose test labels are Larq's predictions, so that
`flip evaluate --checkpoint OUT --data DIR` counts the test images on which Flip and Larq agree
(flip evaluate prints no per-image output). Errors (unknown model, missing data or files,
unsupported layers) print `larq-export: error: ...` and exit with status 2.
"""
import argparse
import gzip
import importlib.util
import json
import math
import os
import re
import struct
import sys
import time
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_LARQ_TRAIN = os.environ.get("FLIP_LARQ_TRAIN")
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DATA_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# model name -> the peer's builder function (Flip's preset names)
BUILDERS = {"binarynet-mlp": "build_binarynet_mlp", "larq-cnn": "build_larq_cnn"}
FORMAT_VERSION = "2"


class ExportError(Exception):
    """A user-facing error: printed as `larq-export: error: ...`, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Inputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train a model with Larq (or load Keras weights) and write it as a Flip model file.")
    p.add_argument("--model", required=True, choices=sorted(BUILDERS),
                   help="Flip preset / Larq peer model to build")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (train.py's --lr)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="directory with the four Fashion-MNIST IDX .gz files")
    p.add_argument("--keras-weights", default=None,
                   help="load these Keras weights (.h5) instead of training")
    p.add_argument("--save-keras-weights", default=None,
                   help="also save the Keras weights (.h5) for a later --keras-weights")
    p.add_argument("--flip-config", default=None,
                   help="take the config metadata verbatim from a Flip run's config.yaml or Flip file")
    p.add_argument("--agreement-data", default=None, metavar="DIR",
                   help="write an MNIST-style directory whose test labels are Larq's predicted classes "
                        "(other files symlinked): `flip evaluate --checkpoint OUT --data DIR` then reports "
                        "the fraction of test images on which Flip predicts what Larq predicts")
    p.add_argument("--larq-train", default=DEFAULT_LARQ_TRAIN,
                   help="the Larq training script (train.py) whose model builders and data reader are used "
                        "(default: $FLIP_LARQ_TRAIN)")
    p.add_argument("--intra-op-threads", type=int, default=2)
    p.add_argument("--inter-op-threads", type=int, default=1)
    p.add_argument("--out", required=True, help="Flip model file to write (.safetensors)")
    args = p.parse_args(argv)
    if args.epochs <= 0:
        p.error(f"--epochs must be positive, got {args.epochs}")
    if args.batch_size <= 0:
        p.error(f"--batch-size must be positive, got {args.batch_size}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        p.error(f"--lr must be a positive number, got {args.lr}")
    return args


def check_inputs(args):
    """Fails early (before TensorFlow is imported) on missing files and unwritable output."""
    if not args.larq_train or not os.path.isfile(args.larq_train):
        raise ExportError(f"the Larq peer's train.py is not at {args.larq_train} (give --larq-train PATH)")
    if not os.path.isdir(args.data_dir):
        raise ExportError(
            f"data directory {args.data_dir} does not exist: install the Debian package "
            f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or give --data-dir")
    missing = [f for f in DATA_FILES if not os.path.isfile(os.path.join(args.data_dir, f))]
    if missing:
        raise ExportError(f"data directory {args.data_dir} lacks {', '.join(missing)} "
                          f"(train.py reads the gzip-compressed IDX files)")
    if args.keras_weights is not None and not os.path.isfile(args.keras_weights):
        raise ExportError(f"--keras-weights {args.keras_weights}: no such file")
    if args.flip_config is not None and not os.path.isfile(args.flip_config):
        raise ExportError(f"--flip-config {args.flip_config}: no such file")
    if args.agreement_data is not None and os.path.exists(args.agreement_data) and (
            not os.path.isdir(args.agreement_data)):
        raise ExportError(f"--agreement-data {args.agreement_data}: exists and is not a directory")
    for path in (args.out, args.save_keras_weights):
        if path is None:
            continue
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            raise ExportError(f"cannot write {path}: directory {d} does not exist")
        if os.path.isdir(path):
            raise ExportError(f"cannot write {path}: it is a directory")


def import_peer(path):
    """The peer's train.py as a module. Importing it only defines functions (and sets
    TF_CPP_MIN_LOG_LEVEL); main() is behind `if __name__ == "__main__"`."""
    spec = importlib.util.spec_from_file_location("larq_peer_train", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - report any import failure as a clear error
        raise ExportError(f"cannot import {path}: {type(e).__name__}: {e}") from e
    for name in list(BUILDERS.values()) + ["load_fashion_mnist"]:
        if not hasattr(module, name):
            raise ExportError(f"{path} has no function {name}()")
    return module


# ---------------------------------------------------------------------------------------------
# Flip's config YAML (RunConfig.yaml(): Yams.dump(sortKeys: true))


def yams_double(x):
    """A Double as Yams writes it: scientific, 15 significant digits, trailing zeros trimmed,
    exponent without leading zeros (1 -> 1e+0, 0.9f -> 8.99999976158142e-1, 1e-3 -> 1e-3)."""
    if math.isnan(x):
        return ".nan"
    if math.isinf(x):
        return ".inf" if x > 0 else "-.inf"
    mantissa, exponent = f"{x:.14e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    e = int(exponent)
    return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


def f32(x):
    """A Float32 parameter widened to Double, as Flip stores and writes it."""
    import numpy as np
    return float(np.float32(x))


class YamlFloat(float):
    pass


_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./+-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, YamlFloat):
        return yams_double(float(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        if _PLAIN.match(v) and v.lower() not in _RESERVED:
            return v
        return json.dumps(v)  # a double-quoted YAML scalar
    raise TypeError(f"no YAML form for {v!r}")


def yaml_lines(obj, indent):
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        for key in sorted(obj):
            v = obj[key]
            if isinstance(v, dict):
                out.append(f"{pad}{key}:")
                out += yaml_lines(v, indent + 2)
            elif isinstance(v, list):
                out.append(f"{pad}{key}:")
                out += yaml_lines(v, indent)  # Yams: a sequence under a key is not indented
            else:
                out.append(f"{pad}{key}: {yaml_scalar(v)}")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)):
                inner = yaml_lines(item, indent + 2)
                out.append(pad + "- " + inner[0][indent + 2:])
                out += inner[1:]
            else:
                out.append(f"{pad}- {yaml_scalar(item)}")
    else:
        raise TypeError(f"no YAML block form for {obj!r}")
    return out


def quantizer_spec(q, lq, where):
    if q is None:
        return None
    if isinstance(q, lq.quantizers.SteSign) and float(q.get_config().get("clip_value", 1.0)) == 1.0:
        return "ste_sign"
    raise ExportError(f"{where}: quantizer {q!r} ({q.get_config()}) is not supported by this exporter "
                      f"(only ste_sign with clip_value 1, as in Flip's presets)")


def layer_spec(layer, tf, lq):
    """The layer as RunConfig.emit(LayerSpec) writes it (only the keys Flip writes)."""
    L = tf.keras.layers
    where = f"layer {layer.name} ({type(layer).__name__})"

    def constraint():
        c = layer.kernel_constraint
        if c is None:
            return None
        if isinstance(c, lq.constraints.WeightClip):
            return {"type": "weight_clip", "clip_value": YamlFloat(f32(c.clip_value))}
        raise ExportError(f"{where}: kernel constraint {c!r} is not supported (only weight_clip)")

    def linear():
        if getattr(layer, "activation", None) not in (None, tf.keras.activations.linear):
            raise ExportError(f"{where}: a fused activation is not supported (Flip has none here)")

    m = {}
    if isinstance(layer, lq.layers.QuantDense):
        linear()
        m = {"type": "QuantDense", "units": int(layer.units), "use_bias": bool(layer.use_bias)}
        iq, kq = quantizer_spec(layer.input_quantizer, lq, where), quantizer_spec(layer.kernel_quantizer, lq, where)
    elif isinstance(layer, lq.layers.QuantConv2D):
        linear()
        if tuple(layer.dilation_rate) != (1, 1) or layer.data_format != "channels_last" or layer.groups != 1:
            raise ExportError(f"{where}: only channels_last, undilated, ungrouped convolutions are supported")
        m = {"type": "QuantConv2D", "filters": int(layer.filters), "kernel_size": [int(k) for k in layer.kernel_size],
             "padding": layer.padding, "pad_values": YamlFloat(f32(layer.pad_values)),
             "use_bias": bool(layer.use_bias)}
        if tuple(layer.strides) != (1, 1):
            m["strides"] = [int(s) for s in layer.strides]
        iq, kq = quantizer_spec(layer.input_quantizer, lq, where), quantizer_spec(layer.kernel_quantizer, lq, where)
    elif isinstance(layer, L.BatchNormalization):
        axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)
        if axis not in (-1, [-1], [len(layer.input_shape) - 1]):
            raise ExportError(f"{where}: only the last axis is supported, got {layer.axis}")
        return {"type": "BatchNormalization", "momentum": YamlFloat(f32(layer.momentum)),
                "epsilon": YamlFloat(f32(layer.epsilon)), "center": bool(layer.center), "scale": bool(layer.scale)}
    elif isinstance(layer, L.MaxPooling2D):
        m = {"type": "MaxPool2D", "pool_size": [int(k) for k in layer.pool_size], "padding": layer.padding}
        if tuple(layer.strides) != tuple(layer.pool_size):  # Flip: strides default to pool_size
            m["strides"] = [int(s) for s in layer.strides]
        return m
    elif isinstance(layer, L.Flatten):
        return {"type": "Flatten"}
    elif isinstance(layer, L.Activation):
        return {"type": "Activation", "activation": layer.activation.__name__}
    else:
        raise ExportError(f"{where}: layer type not supported by this exporter")
    if iq is not None:
        m["input_quantizer"] = iq
    if kq is not None:
        m["kernel_quantizer"] = kq
    c = constraint()
    if c is not None:
        m["kernel_constraint"] = c
    return m


def flip_config_yaml(model, args, input_shape, tf, lq):
    lr = args.lr
    top = {
        "model": args.model,
        "layers": [layer_spec(layer, tf, lq) for layer in model.layers],
        "input_shape": [int(d) for d in input_shape],
        # Adam as Flip's RunConfig stores it (Doubles; train.py's Adam uses Keras's defaults)
        "optimizer": {"type": "adam", "learning_rate": YamlFloat(lr), "beta_1": YamlFloat(0.9),
                      "beta_2": YamlFloat(0.999), "epsilon": YamlFloat(1e-7)},
        "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
        "data": os.path.abspath(args.data_dir), "log_every_steps": 50,
    }
    return "\n".join(yaml_lines(top, 0)) + "\n"


def read_flip_config(path):
    """The config text of a Flip run's config.yaml, or of a Flip file's `config` metadata."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            n = struct.unpack("<Q", head)[0]
            if 2 <= n <= 64 << 20:
                raw = f.read(n)
                if len(raw) == n and raw[:1] == b"{":
                    try:
                        meta = json.loads(raw).get("__metadata__", {})
                    except ValueError:
                        meta = None
                    if meta is not None:
                        if "config" not in meta:
                            raise ExportError(f"--flip-config {path}: the Flip file has no config metadata")
                        return meta["config"]
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------------------------------------
# Flip's tensor names and file


def flip_type_name(layer, tf, lq):
    """Flip's typeName of a layer (Sources/FlipBNN/Layers), the stem of its unique name."""
    L = tf.keras.layers
    if isinstance(layer, lq.layers.QuantDense):
        return "quant_dense" if (layer.input_quantizer or layer.kernel_quantizer) else "dense"
    if isinstance(layer, lq.layers.QuantConv2D):
        return "quant_conv2d" if (layer.input_quantizer or layer.kernel_quantizer) else "conv2d"
    if isinstance(layer, L.BatchNormalization):
        return "batch_normalization"
    return type(layer).__name__.lower()  # no variables: the name is never used


def flip_tensors(model, tf, lq):
    """{Flip name: float32 array} for every Keras variable, mapped by layer position and role."""
    import numpy as np
    roles = {"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"}
    counts = {}
    tensors = {}
    for i, layer in enumerate(model.layers):
        stem = flip_type_name(layer, tf, lq)
        k = counts.get(stem, 0)
        counts[stem] = k + 1
        name = stem if k == 0 else f"{stem}_{k}"
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            want = ({"beta"} if layer.center else set()) | ({"gamma"} if layer.scale else set()) | {
                "moving_mean", "moving_variance"}
        elif layer.weights:
            want = {"kernel"} | ({"bias"} if layer.use_bias else set())
        else:
            want = set()
        got = {}
        for w in layer.weights:
            role = w.name.split("/")[-1].split(":")[0]
            if role not in roles:
                raise ExportError(f"layer {layer.name}: variable {w.name} has no Flip counterpart")
            got[role] = w
        if set(got) != want:
            raise ExportError(f"layer {layer.name}: variables {sorted(got)}, Flip expects {sorted(want)}")
        for role, w in got.items():
            tensors[f"layers.{i}.{name}.{role}"] = np.ascontiguousarray(w.numpy(), dtype="<f4")
    return tensors


def header_crc32(metadata, index):
    """ModelFile.headerChecksum: `key=value` lines (keys sorted), then `name dtype [shape] begin
    end` lines in name order; Swift prints a shape [784, 1024] as "[784, 1024]"."""
    text = "".join(f"{k}={metadata[k]}\n" for k in sorted(metadata))
    for name, dtype, shape, begin, end in index:
        text += f"{name} {dtype} [{', '.join(str(d) for d in shape)}] {begin} {end}\n"
    return f"{zlib.crc32(text.encode('utf-8')):08x}"


def encode_flip_file(tensors, metadata):
    names = sorted(tensors)
    payload = b"".join(tensors[n].tobytes() for n in names)
    index, at = [], 0
    header = {}
    for n in names:
        size = tensors[n].nbytes
        index.append((n, "F32", list(tensors[n].shape), at, at + size))
        header[n] = {"dtype": "F32", "shape": list(tensors[n].shape), "data_offsets": [at, at + size]}
        at += size
    meta = dict(metadata)
    meta["format"] = "flip-model"
    meta["format_version"] = FORMAT_VERSION
    meta["header_crc32"] = header_crc32(meta, index)  # over everything but the two checksums
    meta["payload_crc32"] = f"{zlib.crc32(payload):08x}"
    header["__metadata__"] = meta
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + payload


def decode_check(data, tensors, metadata):
    """Reads the bytes back as Flip's reader does and compares them with what was meant."""
    import numpy as np

    def check(ok, what):
        if not ok:
            raise ExportError(f"internal error: the encoded file fails its read-back check ({what})")

    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")
    payload = data[8 + n:]
    check(n % 8 == 0, "header length")
    check(meta["payload_crc32"] == f"{zlib.crc32(payload):08x}", "payload_crc32")
    covered = {k: v for k, v in meta.items() if k not in ("header_crc32", "payload_crc32")}
    index = [(k, header[k]["dtype"], header[k]["shape"], *header[k]["data_offsets"]) for k in sorted(header)]
    check(meta["header_crc32"] == header_crc32(covered, index), "header_crc32")
    check(sorted(header) == sorted(tensors) and index[-1][4] == len(payload), "tensor index")
    for k, dt, shape, b, e in index:
        check(np.array_equal(np.frombuffer(payload[b:e], dtype="<f4").reshape(shape), tensors[k]), k)
    check(all(meta[k] == v for k, v in metadata.items()), "metadata")


def write_agreement_data(directory, data_dir, predictions):
    """An MNIST-style directory: the data set's images and training labels (symlinks), and
    t10k-labels-idx1-ubyte.gz holding `predictions` (one class per test image) as labels."""
    import numpy as np
    os.makedirs(directory, exist_ok=True)
    for name in DATA_FILES:
        dst = os.path.join(directory, name)
        if os.path.lexists(dst):
            os.unlink(dst)
        if name != "t10k-labels-idx1-ubyte.gz":
            os.symlink(os.path.abspath(os.path.join(data_dir, name)), dst)
    labels = np.asarray(predictions, dtype=np.uint8)
    idx = bytes([0, 0, 0x08, 1]) + struct.pack(">I", len(labels)) + labels.tobytes()
    with open(os.path.join(directory, "t10k-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(gzip.compress(idx, mtime=0))


def write_atomically(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from e


# ---------------------------------------------------------------------------------------------


def emit(record):
    print(json.dumps(record), flush=True)


def main(argv=None):
    args = parse_args(argv)
    check_inputs(args)
    peer = import_peer(args.larq_train)

    import numpy as np
    import tensorflow as tf  # after the peer import, as train.py: thread settings before any op
    import larq as lq

    # --- train.py's main(), step for step ---
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    tf.keras.utils.set_random_seed(args.seed)
    try:
        x_train, y_train, x_test, y_test = peer.load_fashion_mnist(args.data_dir)
    except (OSError, EOFError, ValueError) as e:
        raise ExportError(f"cannot read the data in {args.data_dir}: {e}") from e
    n_train, n_test = len(x_train), len(x_test)
    model = getattr(peer, BUILDERS[args.model])(tf, lq)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=args.lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    summary = []
    lq.models.summary(model, print_fn=summary.append)  # as train.py (prints to stderr here)
    sys.stderr.write("\n".join(summary) + "\n")
    emit({"event": "config", "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
          "lr": args.lr, "seed": args.seed, "n_train": n_train, "n_test": n_test,
          "keras_weights": args.keras_weights, "larq_train": os.path.abspath(args.larq_train),
          "versions": {"tensorflow": tf.__version__, "larq": lq.__version__, "numpy": np.__version__}})

    def make_test_ds():
        return (tf.data.Dataset.from_tensor_slices((x_test, y_test))
                .batch(args.batch_size).prefetch(tf.data.AUTOTUNE))

    if args.keras_weights:
        try:
            model.load_weights(args.keras_weights)
        except Exception as e:  # noqa: BLE001 - h5py/Keras raise many types
            raise ExportError(f"cannot load {args.keras_weights} into {args.model}: {type(e).__name__}: {e}") from e
        step, epochs_done = 0, 0
        test_ds = make_test_ds()
    else:
        train_ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                    .shuffle(n_train, seed=args.seed, reshuffle_each_iteration=True)
                    .batch(args.batch_size)  # last partial batch kept, as train.py
                    .prefetch(tf.data.AUTOTUNE))
        test_ds = make_test_ds()  # after train_ds, as train.py
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            hist = model.fit(train_ds, initial_epoch=epoch, epochs=epoch + 1, verbose=0)
            train_s = time.perf_counter() - t0
            test_loss, test_acc = model.evaluate(test_ds, verbose=0)  # as train.py, every epoch
            emit({"event": "epoch", "epoch": epoch + 1, "train_loss": float(hist.history["loss"][-1]),
                  "train_acc": float(hist.history["accuracy"][-1]), "test_loss": float(test_loss),
                  "test_acc": float(test_acc), "train_s": round(train_s, 3)})
        step, epochs_done = int(model.optimizer.iterations.numpy()), args.epochs
        if args.save_keras_weights:
            model.save_weights(args.save_keras_weights)

    # --- Larq's evaluation of the weights being exported ---
    test_loss, test_acc = model.evaluate(test_ds, verbose=0)
    probs = model.predict(test_ds, verbose=0)
    predictions = np.argmax(probs, axis=1)
    correct = int(np.sum(predictions == y_test))
    emit({"event": "larq_evaluate", "test_loss": float(test_loss), "test_acc": float(test_acc),
          "correct": correct, "n_test": n_test})
    print(f"larq: test_loss: {test_loss:.4f} - test_accuracy: {correct / n_test:.4f} "
          f"({correct}/{n_test} images from {args.data_dir})", flush=True)

    # --- the Flip file ---
    tensors = flip_tensors(model, tf, lq)
    config = flip_config_yaml(model, args, x_test.shape[1:], tf, lq)
    if args.flip_config:
        given = read_flip_config(args.flip_config)
        print(f"config: from {args.flip_config} ({'identical to' if given == config else 'DIFFERS from'} "
              f"the emitted text)", flush=True)
        config = given
    metadata = {"model": args.model, "config": config, "step": str(step), "epoch": str(epochs_done)}
    data = encode_flip_file(tensors, metadata)
    decode_check(data, tensors, metadata)
    write_atomically(args.out, data)
    emit({"event": "written", "out": os.path.abspath(args.out), "bytes": len(data), "tensors": len(tensors),
          "step": step, "epoch": epochs_done})
    flip = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".build", "release", "flip"))
    print(f"check: {flip} checkpoint inspect {args.out} && {flip} evaluate --checkpoint {args.out}", flush=True)
    if args.agreement_data:
        write_agreement_data(args.agreement_data, args.data_dir, predictions)
        print(f"agreement: {flip} evaluate --checkpoint {args.out} --data {args.agreement_data}"
              f"  # test_accuracy = fraction of the {n_test} test images where Flip predicts Larq's class",
              flush=True)


if __name__ == "__main__":
    try:
        main()
    except ExportError as e:
        print(f"larq-export: error: {e}", file=sys.stderr)
        sys.exit(2)
