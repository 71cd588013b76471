#!/usr/bin/env python3
"""Print what TensorBoard reads from a directory of event files, as JSON.

    scripts/tensorboard-read.py runs/a/tensorboard

Reads DIR with TensorBoard's own `EventAccumulator` (tensorboard.backend.event_processing.
event_accumulator), every size guidance 0 (keep every event, no sampling), and prints

    {"scalars":    {tag: [[step, value], ...]},
     "histograms": {tag: {"count": events, "steps": [...], "num": [...], "min": [...],
                          "max": [...], "buckets": [bucket count of each event, ...]}},
     "texts":      {tag: [[step, text], ...]},
     "plugins":    {plugin name: [tags]},
     "versions":   {"tensorboard": ..., "protobuf": ...}}

`plugins` comes from the plugin event accumulator, which converts legacy summaries (simple
values, HistogramProto) as TensorBoard's dashboards see them.

Needs the `tensorboard` package (pip install tensorboard); the Swift test that runs this script
finds its Python through FLIP_TENSORBOARD_PYTHON.
"""

import json
import sys

import google.protobuf
import tensorboard
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util


def read(directory):
    keep_all = {k: 0 for k in event_accumulator.STORE_EVERYTHING_SIZE_GUIDANCE}
    acc = event_accumulator.EventAccumulator(directory, size_guidance=keep_all)
    acc.Reload()
    tags = acc.Tags()

    scalars = {
        tag: [[e.step, e.value] for e in acc.Scalars(tag)]
        for tag in sorted(tags[event_accumulator.SCALARS])
    }

    histograms = {}
    for tag in sorted(tags[event_accumulator.HISTOGRAMS]):
        events = acc.Histograms(tag)
        histograms[tag] = {
            "count": len(events),
            "steps": [e.step for e in events],
            "num": [e.histogram_value.num for e in events],
            "min": [e.histogram_value.min for e in events],
            "max": [e.histogram_value.max for e in events],
            "buckets": [len(e.histogram_value.bucket) for e in events],
        }

    try:
        text_tags = sorted(acc.PluginTagToContent("text"))
    except KeyError:  # no text summaries
        text_tags = []
    texts = {}
    for tag in text_tags:
        rows = []
        for e in acc.Tensors(tag):
            value = tensor_util.make_ndarray(e.tensor_proto)
            item = value.item() if value.ndim == 0 else value.reshape(-1)[0]
            rows.append([e.step, item.decode("utf-8") if isinstance(item, bytes) else str(item)])
        texts[tag] = rows

    plugin_acc = plugin_event_accumulator.EventAccumulator(directory, size_guidance=keep_all)
    plugin_acc.Reload()
    plugins = {
        name: sorted(plugin_acc.PluginTagToContent(name))
        for name in sorted(plugin_acc.ActivePlugins())
    }

    return {
        "scalars": scalars,
        "histograms": histograms,
        "texts": texts,
        "plugins": plugins,
        "versions": {"tensorboard": tensorboard.__version__, "protobuf": google.protobuf.__version__},
    }


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIR")
    sys.stdout.write(compact_json(read(sys.argv[1])) + "\n")


def compact_json(result):
    """JSON with one line per section entry (a tag's whole series on one line)."""
    sections = []
    for name in sorted(result):
        entries = [
            f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}"
            for key, value in sorted(result[name].items())
        ]
        body = "{\n" + ",\n".join(entries) + "\n }" if entries else "{}"
        sections.append(f" {json.dumps(name)}: {body}")
    return "{\n" + ",\n".join(sections) + "\n}"


if __name__ == "__main__":
    main()
