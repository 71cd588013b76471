import FlipBNN

/// The variables in a Keras 2 HDF5 weights file: `model.save_weights("w.h5")` (the format
/// Larq Zoo's pretrained weights ship in), or `model.save("m.h5")`, which puts the same under
/// the group `model_weights`.
///
/// The layout (Keras 2.15, `legacy/saving/hdf5_format.py`): the root's string-array attribute
/// `layer_names` lists every layer in `model.layers` order; each layer's group has the attribute
/// `weight_names` (e.g. `quant_conv2d/kernel:0`, empty for layers without variables), trainable
/// variables first, and a dataset at each of those paths. Kernels are in Keras's layouts:
/// Conv2D (KH, KW, Cin, Cout), Dense (in, units), DepthwiseConv2D (KH, KW, C, M).
public struct KerasWeightsFile: Sendable {
  public struct Weight: Sendable {
    /// As Keras names it, e.g. `quant_conv2d/kernel:0`.
    public var name: String
    public var shape: [Int]
    public var values: [Float]

    /// The variable's role (`kernel`, `gamma`, ...): the name's last part without `:0`.
    public var role: String {
      let last = name.split(separator: "/").last.map(String.init) ?? name
      return last.split(separator: ":").first.map(String.init) ?? last
    }
  }
  public struct Layer: Sendable {
    public var name: String
    public var weights: [Weight]
  }

  /// Every layer the file lists, in its order (those without variables have no weights).
  public var layers: [Layer]

  public init(layers: [Layer]) { self.layers = layers }

  /// The layers that have variables, in order: what Keras's `load_weights` matches by position.
  public var layersWithWeights: [Layer] { layers.filter { !$0.weights.isEmpty } }

  /// Whether `path` is an HDF5 file (by its first 8 bytes), so `--init-from` can tell a Keras
  /// weights file from a Flip file.
  public static func isHDF5(path: String) -> Bool { HDF5.hasSignature(path: path) }

  /// Reads every layer's variables from `path`; errors name the file and what is wrong.
  public static func read(path: String) throws -> KerasWeightsFile {
    try HDF5.locked {
      let (file, root) = try HDF5Group.openFile(path: path)
      defer { withExtendedLifetime(file) {} }
      let top = try weightsGroup(root)
      guard let names = try top.strings(attribute: "layer_names") else {
        throw TrainingError.modelFile(
          path: path,
          reason:
            "has no attribute layer_names (in / or /model_weights): not a Keras weights file (write one with model.save_weights(\"w.h5\"))"
        )
      }
      var layers: [Layer] = []
      for name in names {
        let group = try top.group(name)
        let weightNames = try group.strings(attribute: "weight_names") ?? []
        let weights = try weightNames.map { w in
          let (shape, values) = try group.floats(dataset: w)
          return Weight(name: w, shape: shape, values: values)
        }
        layers.append(Layer(name: name, weights: weights))
      }
      return KerasWeightsFile(layers: layers)
    }
  }

  /// The root for `save_weights`, `model_weights` for a whole saved model.
  private static func weightsGroup(_ root: HDF5Group) throws -> HDF5Group {
    if try root.strings(attribute: "layer_names") == nil, root.has("model_weights") {
      return try root.group("model_weights")
    }
    return root
  }
}
