#!/usr/bin/env python3
"""Write a synthetic ImageNet-like image folder of photo-like JPEGs.

Usage
    python3 scripts/make-imagenet-like.py OUT --train N --val M --classes C \
        [--width 500 --height 375 --quality 90 --seed 0]

Writes N training and M validation images in total, dealt round-robin to C classes named
n00000000, n00000001, ...:
    OUT/train/<class>/<class>_<i>.JPEG      (i = 0, 1, ... within the class, not zero-padded,
    OUT/val/<class>/<class>_<i>.JPEG         like ImageNet's n01440764_10026.JPEG)

Each image is landscape, width in [0.8*W, W] and height in [0.888*H, H] (400-500 x 333-375 by
default), or, one in five, portrait (the same sizes swapped). The content is built to have a
photo's entropy-coded size and decode cost, not to look like anything in particular: a
luminance field with a 1/f spectrum (8 octaves of bicubically upsampled Gaussian noise, equal
energy per octave, down to 2-pixel scale), a smoother weaker chroma field, a linear shading
gradient, 1-2 pixel grain in part of the frame, 2-6 polygons/ellipses with their own colour and
1/f shading (some with soft edges), thousands of short 1-3 px strokes (grass/fur/foliage-like
texture, coloured from the image underneath with a luminance jitter, a preferred orientation,
and a density that varies over the frame and, by a factor 0.4-1.6, from image to image), a few
long polylines, and +-2 levels of sensor noise. Saved by Pillow at --quality (default 90) with
Pillow's default 4:2:0 chroma subsampling. With the defaults the files average ~110 KB
(about 90-135 KB each; real ImageNet training JPEGs average ~110 KB). That is ~5.5 bits/pixel;
three real photos re-encoded here at 500 px wide, quality 90, gave 2.3-3.8 bits/pixel (47-87 KB),
so these images are busier than a typical photo: that is what the 100-150 KB target needs. Their
full decode takes ~7-9 ns/pixel with Pillow 13 (the three photos: 4-5 ns/pixel).

Deterministic: each image's content depends only on (--seed, split, index), so the same
arguments give byte-identical files (with the same Pillow version: its libjpeg-turbo encodes and
its ImageDraw rasterizes; checked identical under numpy 1.26.4 and 2.4.6 with Pillow 13.0.0).
Prints the count, time and mean/min/max file size at the end.

Requirements: Python 3, numpy and Pillow. Used with the Larq Zoo venv
(~/.cache/flip-peers/zoo-venv from /work/shared/peers/larq/zoo-setup.sh, which has numpy 1.26.4
but no Pillow) plus `pip install pillow==13.0.0`; any venv works:
`python3 -m venv v && v/bin/pip install numpy pillow`. Speed: ~40 ms per image on one core of
an AMD EPYC (Zen 3), i.e. ~85 s for 2,000 images.
"""
import argparse
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


STROKES = 8000  # mean number of texture strokes per image (scaled by the per-image detail)
GRAIN = 20  # amplitude of the 1-2 pixel grain
FALLOFF = 1.0  # per-octave amplitude ratio of the background (1.0 = 1/f spectrum)
LUM_STD = 45  # background luminance contrast
JITTER = 75  # stroke luminance jitter
COVER = -0.5  # stroke-region threshold: lower = strokes cover more of the image


def upsample(a, w, h):
    """Bicubic upsampling of a small float32 2-D array to (h, w)."""
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize((w, h), Image.BICUBIC))


def noise_field(rng, w, h, octaves, base_cells, falloff):
    """Sum of octaves of upsampled Gaussian noise; octave k has base_cells*2^k cells across."""
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for k in range(octaves):
        cells = base_cells * (2 ** k)
        gw = max(2, min(w, cells))
        gh = max(2, min(h, int(round(cells * h / w))))
        out += amp * upsample(rng.standard_normal((gh, gw)), w, h)
        amp *= falloff
    return out


def make_image(rng, W, H, detail_scale=1.0):
    portrait = rng.random() < 0.2
    w = int(rng.integers(int(0.8 * W), W + 1))
    h = int(rng.integers(int(0.888 * H), H + 1))
    if portrait:
        w, h = h, w
    detail = rng.uniform(0.4, 1.6) * detail_scale  # images differ in busyness, like photos

    # Background: luminance with a ~1/f spectrum (equal energy per octave, down to 2-pixel scale),
    # smoother and weaker chroma, and a linear shading gradient.
    lum = noise_field(rng, w, h, octaves=8, base_cells=2, falloff=FALLOFF)
    lum *= rng.uniform(0.7, 1.3) * LUM_STD / (float(lum.std(dtype=np.float64)) + 1e-6)
    cb = noise_field(rng, w, h, octaves=5, base_cells=2, falloff=0.7) * rng.uniform(5, 11)
    cr = noise_field(rng, w, h, octaves=5, base_cells=2, falloff=0.7) * rng.uniform(5, 11)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lum += (float(np.cos(ang)) * xx / w + float(np.sin(ang)) * yy / h) * rng.uniform(20, 70)
    # Fine grain (1-2 px) in a smooth random region.
    mask = np.clip(upsample(rng.standard_normal((3, 4)), w, h) + 0.3, 0, 1)
    lum += mask * (upsample(rng.standard_normal((h // 2, w // 2)), w, h) * 0.7
                   + rng.standard_normal((h, w)).astype(np.float32) * 0.5) * GRAIN * detail
    base = rng.uniform(70, 180, 3).astype(np.float32)
    rgb = np.stack([lum + 1.402 * cr, lum - 0.344 * cb - 0.714 * cr, lum + 1.772 * cb], -1) + base
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb)

    # Objects: polygons and ellipses with their own colour and textured shading; some soft-edged.
    for _ in range(int(rng.integers(2, 7))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.35) * min(w, h)
        ry = r * rng.uniform(0.4, 1.5)
        x0, y0 = max(0, int(cx - 1.3 * r) - 8), max(0, int(cy - 1.5 * max(r, ry)) - 8)
        x1, y1 = min(w, int(cx + 1.3 * r) + 8), min(h, int(cy + 1.5 * max(r, ry)) + 8)
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        bw, bh = x1 - x0, y1 - y0
        layer = Image.new("L", (bw, bh), 0)
        d = ImageDraw.Draw(layer)
        cx, cy = cx - x0, cy - y0
        if rng.random() < 0.5:
            m = int(rng.integers(3, 9))
            th = np.sort(rng.uniform(0, 2 * np.pi, m))
            rr = r * rng.uniform(0.5, 1.2, m)
            d.polygon([(float(cx + q * np.cos(t)), float(cy + q * np.sin(t))) for q, t in zip(rr, th)], fill=255)
        else:
            d.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=255)
        if rng.random() < 0.4:
            layer = layer.filter(ImageFilter.GaussianBlur(rng.uniform(1, 4)))
        shade = noise_field(rng, bw, bh, octaves=6, base_cells=2, falloff=FALLOFF)
        shade *= rng.uniform(10, 30) / (float(shade.std(dtype=np.float64)) + 1e-6)
        obj = np.clip(rng.uniform(0, 255, 3).astype(np.float32) + shade[..., None], 0, 255).astype(np.uint8)
        img.paste(Image.fromarray(obj), (x0, y0), layer)
    rgb = np.asarray(img)
    draw = ImageDraw.Draw(img)

    # Foliage/grass/fur/fabric-like texture: short strokes over most of the image, denser in a
    # random region, coloured from the image there with a luminance jitter, with a preferred
    # orientation.
    n = int(STROKES * detail)
    region = upsample(rng.standard_normal((3, 4)), w, h)
    xs = rng.uniform(0, w - 1, 3 * n)
    ys = rng.uniform(0, h - 1, 3 * n)
    keep = region[ys.astype(int), xs.astype(int)] > rng.uniform(COVER - 1.0, COVER, 3 * n)
    xs, ys = xs[keep][:n], ys[keep][:n]
    k = len(xs)
    lens = rng.uniform(2, 14, k)
    angs = rng.uniform(0, np.pi) + rng.normal(0, rng.uniform(0.2, 1.5), k)
    widths = rng.integers(1, 4, k).tolist()
    cols = rgb[ys.astype(int), xs.astype(int)].astype(np.float32)
    cols += rng.normal(0, JITTER, (k, 1)) + rng.normal(0, 12, (k, 3))
    cols = [tuple(c) for c in np.clip(cols, 0, 255).astype(np.uint8).tolist()]
    segs = np.stack([xs, ys, xs + lens * np.cos(angs), ys + lens * np.sin(angs)], 1).tolist()
    for seg, c, wd in zip(segs, cols, widths):
        draw.line(seg, fill=c, width=wd)

    # Branch/edge-like longer polylines.
    for _ in range(int(rng.integers(2, 10))):
        pts = [(rng.uniform(0, w), rng.uniform(0, h))]
        a = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 12))):
            a += rng.normal(0, 0.5)
            step = rng.uniform(10, 40)
            pts.append((pts[-1][0] + step * np.cos(a), pts[-1][1] + step * np.sin(a)))
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 5)))

    # Mild sensor noise.
    arr = np.asarray(img).astype(np.int16)
    arr += rng.integers(-2, 3, arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, required=True, help="training images (total)")
    p.add_argument("--val", type=int, required=True, help="validation images (total)")
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    classes = ["n%08d" % c for c in range(a.classes)]
    sizes = []
    t0 = time.time()
    for split_id, (split, n) in enumerate((("train", a.train), ("val", a.val))):
        for c in classes:
            os.makedirs(os.path.join(a.out, split, c), exist_ok=True)
        for i in range(n):
            c = classes[i % a.classes]
            rng = np.random.default_rng([a.seed, split_id, i])
            path = os.path.join(a.out, split, c, "%s_%d.JPEG" % (c, i // a.classes))
            make_image(rng, a.width, a.height).save(path, "JPEG", quality=a.quality)
            sizes.append(os.path.getsize(path))
    dt = time.time() - t0
    if sizes:
        print("wrote %d images (%d train, %d val, %d classes) to %s in %.1f s; mean JPEG size %.1f KB "
              "(min %.1f, max %.1f)" % (len(sizes), a.train, a.val, a.classes, a.out, dt,
                                        np.mean(sizes) / 1000, min(sizes) / 1000, max(sizes) / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
