#!/usr/bin/env python3
"""Write an image folder as TFDS-style TFRecord shards and WebDataset tar shards, with the real tools.

Usage
    python scripts/real-tools-data.py SRC OUT [--name imagenet_like] [--train-shards 2]
        [--val-shards 1] [--shuffle-seed 0]

SRC is an image folder: SRC/train/<class>/<file> and SRC/val/<class>/<file> (e.g. from
scripts/make-imagenet-like.py). Classes are the sorted class folder names of SRC/train (val's
must be a subset); a class's label is its index in that order. Files are taken in sorted
order per class and classes in order; the training split is then shuffled with
random.Random(--shuffle-seed) (TFDS's ImageNet shards are shuffled too; --shuffle-seed -1 keeps
the sorted order); validation stays sorted. Each split is cut into contiguous shards whose
sizes differ by at most one (the first ones get the extra example). Output, deterministic
(byte-identical on re-runs):

  OUT/tfrecord/<name>/1.0.0/<name>-train.tfrecord-0000K-of-0000N       (N = --train-shards)
  OUT/tfrecord/<name>/1.0.0/<name>-validation.tfrecord-0000K-of-0000M  (M = --val-shards)
  OUT/tfrecord/<name>/1.0.0/label.labels.txt      class names, one per line (TFDS's layout)
      written with TensorFlow's own tf.io.TFRecordWriter (uncompressed); each record is a
      serialized tf.train.Example with features
        image      bytes_list: the JPEG file's bytes, unchanged
        label      int64_list: class index
        file_name  bytes_list: the file's base name, e.g. b"n00000003_7.JPEG"
      (the feature names and encodings of TFDS's imagenet2012; no dataset_info.json is written)
  OUT/webdataset/train/shard-00000.tar ... (N shards), OUT/webdataset/val/shard-00000.tar ...
  OUT/webdataset/label.labels.txt
      written with webdataset.TarWriter (mtime fixed at 0 for reproducibility); one sample per
      image {"__key__": "<class>/<stem>", "jpg": JPEG bytes, "cls": label}, i.e. tar members
      "<class>/<stem>.cls" (the label as decimal text, webdataset's default int encoding) then
      "<class>/<stem>.jpg"
  OUT/expected.json
      {"name", "classes": [...], "train": [[file_name, label], ...], "validation": [...],
       "shards": {"tfrecord": {"train": [[file, count], ...], "validation": [...]},
                  "webdataset": {"train": [...], "validation": [...]}}}
      "train"/"validation" list the examples in the order written (shard 0 first); both formats
      hold the same examples in the same order.

Environment: the Larq Zoo venv ~/.cache/flip-peers/zoo-venv (from
/work/shared/peers/larq/zoo-setup.sh: TensorFlow 2.15.1) plus
`~/.cache/flip-peers/zoo-venv/bin/pip install webdataset==1.0.2` (used: webdataset 1.0.2, which
pulls braceexpand and PyYAML; it needs no torch).
"""
import argparse
import json
import os
import random
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def list_split(src, split, classes):
    root = os.path.join(src, split)
    if not os.path.isdir(root):
        return []
    items = []
    for c in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, c)):
            continue
        if c not in classes:
            sys.exit("%s/%s: class %s is not in train" % (root, c, c))
        for f in sorted(os.listdir(os.path.join(root, c))):
            items.append((os.path.join(root, c, f), f, classes.index(c), c))
    return items


def shard_ranges(n, shards):
    base, extra = divmod(n, shards)
    out, start = [], 0
    for k in range(shards):
        size = base + (1 if k < extra else 0)
        out.append((start, start + size))
        start += size
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--name", default="imagenet_like")
    p.add_argument("--train-shards", type=int, default=2)
    p.add_argument("--val-shards", type=int, default=1)
    p.add_argument("--shuffle-seed", type=int, default=0)
    a = p.parse_args()

    import tensorflow as tf
    import webdataset as wds

    classes = sorted(d for d in os.listdir(os.path.join(a.src, "train"))
                     if os.path.isdir(os.path.join(a.src, "train", d)))
    train = list_split(a.src, "train", classes)
    if a.shuffle_seed >= 0:
        random.Random(a.shuffle_seed).shuffle(train)
    splits = [("train", "train", train, a.train_shards),
              ("validation", "val", list_split(a.src, "val", classes), a.val_shards)]

    tfr_dir = os.path.join(a.out, "tfrecord", a.name, "1.0.0")
    wds_dir = os.path.join(a.out, "webdataset")
    for d in (tfr_dir, wds_dir):
        os.makedirs(d, exist_ok=True)
    labels_txt = "".join(c + "\n" for c in classes)
    for d in (tfr_dir, wds_dir):
        with open(os.path.join(d, "label.labels.txt"), "w") as f:
            f.write(labels_txt)

    expected = {"name": a.name, "classes": classes, "shards": {"tfrecord": {}, "webdataset": {}}}
    for split, wds_split, items, shards in splits:
        expected[split] = [[fn, label] for _, fn, label, _ in items]
        expected["shards"]["tfrecord"][split] = []
        expected["shards"]["webdataset"][split] = []
        os.makedirs(os.path.join(wds_dir, wds_split), exist_ok=True)
        for k, (lo, hi) in enumerate(shard_ranges(len(items), shards)):
            tfr_name = "%s-%s.tfrecord-%05d-of-%05d" % (a.name, split, k, shards)
            tar_name = "shard-%05d.tar" % k
            with tf.io.TFRecordWriter(os.path.join(tfr_dir, tfr_name)) as tw, \
                    wds.TarWriter(os.path.join(wds_dir, wds_split, tar_name), mtime=0) as ww:
                for path, fn, label, c in items[lo:hi]:
                    with open(path, "rb") as f:
                        data = f.read()
                    ex = tf.train.Example(features=tf.train.Features(feature={
                        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                        "file_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[fn.encode()])),
                    }))
                    tw.write(ex.SerializeToString())
                    ww.write({"__key__": "%s/%s" % (c, os.path.splitext(fn)[0]), "jpg": data, "cls": label})
            expected["shards"]["tfrecord"][split].append([tfr_name, hi - lo])
            expected["shards"]["webdataset"][split].append([wds_split + "/" + tar_name, hi - lo])
        print("%s: %d examples in %d shards" % (split, len(items), shards))

    with open(os.path.join(a.out, "expected.json"), "w") as f:
        # One key per line, one example or shard per line.
        lines = []
        for k, v in expected.items():
            if k in ("train", "validation"):
                body = "[\n" + ",\n".join(json.dumps(e) for e in v) + "\n]"
            else:
                body = json.dumps(v)
            lines.append("%s: %s" % (json.dumps(k), body))
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    print("wrote %s (tensorflow %s, webdataset %s)" % (a.out, tf.__version__, getattr(wds, "__version__", "?")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
