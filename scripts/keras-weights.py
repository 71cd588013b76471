#!/usr/bin/env python3
"""Keras weights and Keras's outputs for Flip's Keras-weights test (KerasWeightsTests).

For each model asked for, builds it in Keras (Larq Zoo's `birealnet18` = literature.BiRealNet
and `quicknet` = sota.QuickNet at 224x224x3 with 1,000 classes, weights=None; `tiny` is a
small graph at 16x16x3 with 10 classes whose Flip twin is Tests/FlipTests/Fixtures/keras-tiny.yaml),
gives EVERY variable random values (kernels, biases, and BatchNormalization's gamma, beta,
moving mean and moving variance), and writes into OUT:

  NAME.h5            model.save_weights (Keras 2's HDF5 layout, as Larq Zoo's weights ship)
  NAME.inputs.f32    N random inputs, float32 little-endian, (N, H, W, C)
  NAME.logits.f32    the pre-softmax outputs (the last Dense/QuantDense layer), (N, classes),
                     inference mode
  NAME.signs.u8      for each layer with an input quantizer, in model.layers order, the signs
                     of its input (x >= 0, Larq's sign(0) = +1), numpy.packbits little bit order,
                     each layer's bits starting on a byte
  NAME.json          shapes, and each quantized layer's name, element count and byte offset

Usage: keras-weights.py OUT [--models birealnet18 quicknet tiny] [--images 8] [--seed 0]
(scripts/keras-weights-check.sh makes its virtual environment, runs it and then the test.)
"""

import argparse
import json
import os
import zlib

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402
import larq as lq  # noqa: E402


def tiny():
    """A small graph with every variable role Flip maps: Conv2D, BatchNormalization (with and
    without center/scale), QuantConv2D (approx_sign/ste_sign inputs, magnitude_aware_sign and
    ste_sign kernels, a bias), Add (shortcuts around the binary layers, so real values reach the
    output), DepthwiseConv2D, AveragePooling2D, Flatten, Dense."""
    L = tf.keras.layers
    inp = tf.keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv2d")(inp)
    x = L.BatchNormalization(momentum=0.9, name="batch_normalization")(x)
    y = lq.layers.QuantConv2D(
        8, 3, padding="same", input_quantizer="approx_sign", kernel_quantizer="magnitude_aware_sign",
        kernel_constraint="weight_clip", use_bias=False, name="quant_conv2d")(x)
    y = L.BatchNormalization(momentum=0.9, name="batch_normalization_1")(y)
    x = L.Add(name="add")([y, x])
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise_conv2d")(x)
    x = L.BatchNormalization(momentum=0.9, center=False, scale=False, name="batch_normalization_2")(x)
    y = lq.layers.QuantConv2D(
        8, 3, padding="same", input_quantizer="ste_sign", kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip", use_bias=True, name="quant_conv2d_1")(x)
    x = L.Add(name="add_1")([y, x])  # a real-valued path to the output, as in Bi-Real Net
    x = L.AveragePooling2D(2, name="average_pooling2d")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(10, name="dense")(x)
    x = L.Activation("softmax", name="activation")(x)
    return tf.keras.Model(inp, x)


def build(name):
    if name == "tiny":
        return tiny()
    import larq_zoo as lqz

    make = {"birealnet18": lqz.literature.BiRealNet, "quicknet": lqz.sota.QuickNet}[name]
    return make(weights=None, input_shape=(224, 224, 3), num_classes=1000)


def randomize(model, rng):
    """Random values for every variable, kept in the ranges a trained network has, so that
    activations neither vanish nor explode and every BatchNormalization term matters."""
    for layer in model.layers:
        for w in layer.weights:
            role = w.name.split("/")[-1].split(":")[0]
            shape = tuple(w.shape)
            if role == "gamma":
                v = rng.uniform(0.5, 1.5, shape)
            elif role == "beta":
                v = rng.normal(0, 0.2, shape)
            elif role == "moving_mean":
                v = rng.normal(0, 0.2, shape)
            elif role == "moving_variance":
                v = rng.uniform(0.5, 2.0, shape)
            elif role == "bias":
                v = rng.normal(0, 0.1, shape)
            else:  # kernel, depthwise_kernel: He-like scale on the fan-in
                fan_in = int(np.prod(shape[:-1])) if role == "kernel" else int(np.prod(shape[:2]))
                v = rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), shape)
            w.assign(v.astype(np.float32))


def calibrate(model, x, rng):
    """Moving statistics near those of each BatchNormalization's input, then perturbed: mean
    + 0.2 std N(0, 1), variance x U(0.5, 2). Statistics unrelated to the activations (as
    uniform random ones are) are unlike any trained network's: activations drift to large
    common offsets, the pooled features of all images nearly coincide, and the logits are a
    small difference of large sums. The statistics come from one training-mode pass on `x`
    (each layer normalized by its batch's statistics, as during training)."""
    norms = [l for l in model.layers if isinstance(l, tf.keras.layers.BatchNormalization)]
    probe = tf.keras.Model(model.input, [l.input for l in norms])
    for layer, value in zip(norms, probe(x, training=True)):
        v = value.numpy()
        axes = tuple(range(v.ndim - 1))
        mean, var = v.mean(axis=axes), v.var(axis=axes)
        mean = mean + 0.2 * np.sqrt(var) * rng.normal(0, 1, mean.shape)
        var = var * rng.uniform(0.5, 2.0, var.shape)
        weights = {w.name.split("/")[-1].split(":")[0]: w for w in layer.weights}
        weights["moving_mean"].assign(mean.astype(np.float32))
        weights["moving_variance"].assign(var.astype(np.float32))


def quantized_layers(model):
    return [l for l in model.layers if getattr(l, "input_quantizer", None) is not None]


def logits_layer(model):
    dense = [l for l in model.layers if isinstance(l, (tf.keras.layers.Dense, lq.layers.QuantDense))]
    return dense[-1]


def inputs(rng, images, h, w, c):
    """Random images unlike each other after global pooling (white noise alone averages out to
    the same features, and so the same class, for every image): a smooth pattern from 4x4 noise
    plus a per-image, per-channel offset, plus white noise."""
    coarse = rng.normal(0, 1, (images, 4, 4, c)).astype(np.float32)
    smooth = tf.image.resize(coarse, (h, w), method="bilinear").numpy()
    offset = rng.normal(0, 1, (images, 1, 1, c))
    return (smooth + offset + 0.5 * rng.normal(0, 1, (images, h, w, c))).astype(np.float32)


def center_logits(model, x):
    """Sets the last Dense layer's bias to minus the mean of its product over the inputs, so the
    logits are what tells the images apart (with the same features pooled from every image, a
    network with random weights would give every image the same class, and top-1 agreement
    would say little)."""
    dense = logits_layer(model)
    features = tf.keras.Model(model.input, dense.input)(x, training=False).numpy()
    kernel, bias = dense.get_weights()
    product = features @ kernel
    dense.set_weights([kernel, (-product.mean(axis=0)).astype(np.float32)])
    return float((product - product.mean(axis=0)).std() / np.abs(product).mean())


def write(model, name, out, images, rng):
    h, w, c = model.input_shape[1:]
    x = inputs(rng, images, h, w, c)
    spread = center_logits(model, x)
    quantized = quantized_layers(model)
    probe = tf.keras.Model(model.input, [l.input for l in quantized] + [logits_layer(model).output])
    results = probe(x, training=False)
    results = results if isinstance(results, list) else [results]
    logits = results[-1].numpy().astype("<f4")
    model.save_weights(os.path.join(out, name + ".h5"))
    x.astype("<f4").tofile(os.path.join(out, name + ".inputs.f32"))
    logits.tofile(os.path.join(out, name + ".logits.f32"))
    rows, offset = [], 0
    with open(os.path.join(out, name + ".signs.u8"), "wb") as f:
        for layer, value in zip(quantized, results[:-1]):
            bits = np.packbits(value.numpy().reshape(-1) >= 0, bitorder="little")
            f.write(bits.tobytes())
            rows.append({"name": layer.name, "count": int(value.numpy().size), "offset": offset})
            offset += bits.size
    meta = {
        "model": name, "images": images, "input_shape": [h, w, c], "classes": int(logits.shape[1]),
        "quantized_layers": rows,
        "top1": [int(i) for i in logits.argmax(axis=1)],
    }
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
    return logits, spread


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--models", nargs="+", default=["birealnet18", "quicknet", "tiny"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in args.models:
        seed = [args.seed, zlib.crc32(name.encode())]  # the same draws whatever else is built
        rng = np.random.default_rng(seed)
        tf.keras.backend.clear_session()  # Keras's automatic layer names start afresh
        tf.keras.utils.set_random_seed(int(rng.integers(1 << 31)))
        model = build(name)
        randomize(model, rng)
        h, w, c = model.input_shape[1:]
        calibrate(model, inputs(rng, args.images, h, w, c), rng)
        logits, spread = write(model, name, args.out, args.images, rng)
        print(f"{name}: {len(quantized_layers(model))} quantized layers, top-1 {logits.argmax(axis=1).tolist()}, "
              f"logits std {logits.std():.3g} ({spread:.2g} of the mean |product| of the last layer)")

if __name__ == "__main__":
    main()
