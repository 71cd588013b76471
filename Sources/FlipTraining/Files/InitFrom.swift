import FlipBNN

/// Initializes `model` from another model's tensors — the second step of Larq's two-step
/// training, where a binary model starts from its pretrained real-valued variant
/// (`[LayerSpec].realValued()`, same tensor names).
///
/// Copies every trainable variable and BatchNormalization state tensor by name, then clips
/// each kernel to its layer's constraint (`weight_clip`), as training would after a step.
/// Optimizer state (`optimizer.*`) is ignored; bit-packed U32 kernels of a binary export are
/// unpacked to ±1. All missing and unexpected names are one error, as are all shape
/// mismatches; each names `path`. On error the model is unchanged.
public func initialize(_ model: Model, from tensors: [String: SafeTensors.Tensor], path: String) throws {
  let views = model.store.views + model.store.stateViews
  let values = try ModelFile.values(for: views, from: tensors, packedKernels: nil, path: path)
  for (v, x) in zip(views, values) {
    let p = model.store.pointer(v)
    x.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: v.count) }
    v.constraint?.apply(p, count: v.count)
  }
}

/// Initializes `model` from the file at `path`, whichever kind it is: Keras weights (an HDF5
/// file, `model.save_weights("w.h5")`, matched by layer order and shape: `KerasWeights`) or a
/// Flip model, checkpoint or export (matched by tensor name). Returns what was read, for the log.
public func initialize(_ model: Model, fromFile path: String) throws -> String {
  if KerasWeightsFile.isHDF5(path: path) {
    let summary = try KerasWeights.load(path: path, into: model)
    return "\(path) (Keras weights: \(summary.layers) layers, \(summary.tensors) tensors)"
  }
  let (tensors, metadata) = try ModelFile.read(path: path)
  try initialize(model, from: tensors, path: path)
  return "\(path) (\(metadata["model"] ?? "?"), step \(metadata["step"] ?? "?"))"
}
