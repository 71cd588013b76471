#!/usr/bin/env python3
"""Histograms of TensorFlow's own random-crop sampler, as a test fixture for Flip's crop sampler.

Usage
    python scripts/crop-reference.py OUT.json [--draws 200000] [--seed 0]

Draws --draws crops per image size (H, W) in (375, 500), (500, 333), (64, 48) with
    tf.image.stateless_sample_distorted_bounding_box(image_size=[H, W, 3],
        bounding_boxes=[[[0, 0, 1, 1]]], seed=[seed, size_index * draws + i],
        min_object_covered=0.1, aspect_ratio_range=(3/4, 4/3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
i.e. exactly the sampler of Larq Zoo's training preprocessing (larq_zoo/training/data.py,
_decode_and_random_crop; the stateless variant of the op runs the same kernel code, only the
Philox key/counter come from the seed), in a tf.while_loop inside one tf.function (one thread;
~2 s per 100k draws). Writes OUT.json (compact, a committed test fixture):
    {"tensorflow": version, "op": ..., "params": {...}, "sizes": [
       {"height": H, "width": W, "draws": n,
        "whole_image_fraction": fraction of draws that returned the whole image (H x W at 0,0:
            the fallback after 10 failed attempts, or a sampled crop that happens to be the
            whole image; Larq Zoo replaces both by a centre crop),
        "area_bins": [0, 1, 20], "area_hist": 20 fractions of the other draws by
            crop area / image area, bin k = [k/20, (k+1)/20) (last bin closed),
        "aspect_bins": [0.7, 1.4, 20], "aspect_hist": 20 fractions of the other draws by
            aspect w/h, bin k = [0.7 + k*0.035, 0.7 + (k+1)*0.035),
        "aspect_outside": fraction of the other draws with w/h outside [0.7, 1.4] (0),
        "mean_area", "mean_aspect", "min_area": over the other draws}, ...]}
Fractions are rounded to 6 decimals (the histograms' sampling noise at 200k draws is ~1e-3).

What TF's kernel does (tensorflow/core/kernels/image/sample_distorted_bounding_box_op.cc), for
comparison: per attempt, aspect a = uniform float in [3/4, 4/3]; h_min = lrint(sqrt(0.08*H*W/a)),
h_max = lrint(sqrt(1.0*H*W/a)) lowered so lrint(h_max*a) <= W and h_max <= H; height uniform
integer in [h_min, h_max] (so not area-uniform: small crops are more likely); width = lrint(h*a);
one +-1 height fix-up if the area misses [0.08, 1] x H*W, else the attempt fails; y uniform in
[0, H-h-1], x uniform in [0, W-w-1] (0 if the crop spans the dimension); then the crop must
cover >= 0.1 of the image box (min_object_covered), so areas in [0.08, 0.1) are rejected too.
After 10 failed attempts the whole image is returned.

Environment: the Larq Zoo venv ~/.cache/flip-peers/zoo-venv (from
/work/shared/peers/larq/zoo-setup.sh; TensorFlow 2.15.1, numpy 1.26.4); any TF 2.x venv works.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIZES = [(375, 500), (500, 333), (64, 48)]
PARAMS = {"min_object_covered": 0.1, "aspect_ratio_range": [3 / 4, 4 / 3], "area_range": [0.08, 1.0],
          "max_attempts": 10, "use_image_if_no_bounding_boxes": True}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--draws", type=int, default=200000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)

    bbox = tf.constant([[[0.0, 0.0, 1.0, 1.0]]], tf.float32)

    @tf.function
    def draw(image_size, first, n):
        def body(i, begins, sizes):
            begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
                image_size, bbox, seed=tf.stack([tf.constant(a.seed, tf.int64), first + tf.cast(i, tf.int64)]),
                min_object_covered=PARAMS["min_object_covered"],
                aspect_ratio_range=tuple(PARAMS["aspect_ratio_range"]),
                area_range=tuple(PARAMS["area_range"]), max_attempts=PARAMS["max_attempts"],
                use_image_if_no_bounding_boxes=PARAMS["use_image_if_no_bounding_boxes"])
            return i + 1, begins.write(i, begin[:2]), sizes.write(i, size[:2])
        _, begins, sizes = tf.while_loop(
            lambda i, b, s: i < n, body,
            (tf.constant(0), tf.TensorArray(tf.int32, size=n), tf.TensorArray(tf.int32, size=n)))
        return begins.stack(), sizes.stack()

    r6 = lambda x: round(float(x), 6)
    out = {"tensorflow": tf.__version__, "op": "tf.image.stateless_sample_distorted_bounding_box",
           "params": dict(PARAMS, aspect_ratio_range=["3/4", "4/3"]),
           "seed": "[%d, size_index * draws + i]" % a.seed, "sizes": []}
    for si, (H, W) in enumerate(SIZES):
        t0 = time.time()
        begins, sizes = draw(tf.constant([H, W, 3], tf.int32), tf.constant(si * a.draws, tf.int64),
                             tf.constant(a.draws))
        begins, sizes = begins.numpy(), sizes.numpy()
        h, w = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
        assert (begins >= 0).all() and (begins[:, 0] + h <= H).all() and (begins[:, 1] + w <= W).all()
        whole = (h == H) & (w == W)
        area = (h * w / (H * W))[~whole]
        aspect = (w / h)[~whole]
        m = max(1, len(area))
        out["sizes"].append({
            "height": H, "width": W, "draws": a.draws,
            "whole_image_fraction": r6(whole.mean()),
            "area_bins": [0, 1, 20],
            "area_hist": [r6(c / m) for c in np.histogram(area, bins=20, range=(0.0, 1.0))[0]],
            "aspect_bins": [0.7, 1.4, 20],
            "aspect_hist": [r6(c / m) for c in np.histogram(aspect, bins=20, range=(0.7, 1.4))[0]],
            "aspect_outside": r6(((aspect < 0.7) | (aspect > 1.4)).sum() / m),
            "mean_area": r6(area.mean()), "mean_aspect": r6(aspect.mean()), "min_area": r6(area.min()),
        })
        s = out["sizes"][-1]
        print("%dx%d: %d draws in %.1f s, whole image %.4f, mean area %.4f, mean aspect %.4f, min area %.4f"
              % (H, W, a.draws, time.time() - t0, s["whole_image_fraction"], s["mean_area"],
                 s["mean_aspect"], s["min_area"]))

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("{\n" + ",\n".join(
            "%s: %s" % (json.dumps(k), "[\n" + ",\n".join(json.dumps(e) for e in v) + "\n]" if k == "sizes" else json.dumps(v))
            for k, v in out.items()) + "\n}\n")
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
