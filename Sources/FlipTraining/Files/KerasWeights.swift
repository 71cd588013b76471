import FlipBNN

/// Keras weights into a Flip model, as Keras's own `load_weights` of an HDF5 file matches them:
/// by position. The file's layers that have variables, in order, pair with the model's layers
/// that have variables, in order; within a pair each Flip variable takes the Keras weight of the
/// same role (`kernel`, `depthwise_kernel`, `bias`, `gamma`, `beta`, `moving_mean`,
/// `moving_variance`), which must have the same shape (Flip keeps Keras's kernel layouts).
/// Layer names are not compared: a Keras model's automatic names depend on what else the
/// Python session built.
public enum KerasWeights {
  /// What a load copied.
  public struct Summary: Sendable, Equatable {
    public var layers: Int
    public var tensors: Int
  }

  /// Reads `path` (`model.save_weights("w.h5")`) and copies it into `model`, then clips each
  /// kernel to its constraint (`weight_clip`) as training would. All mismatches are one error
  /// naming the file, the Keras layer and the Flip layer; on error the model is unchanged.
  @discardableResult
  public static func load(path: String, into model: Model) throws -> Summary {
    try load(try KerasWeightsFile.read(path: path), into: model, path: path)
  }

  /// Copies `file` (read from `path`, named in errors) into `model`, as `load(path:into:)`.
  @discardableResult
  public static func load(_ file: KerasWeightsFile, into model: Model, path: String) throws -> Summary {
    let pairs = try match(file, to: model, path: path)
    for (view, weight) in pairs {
      let p = model.store.pointer(view)
      weight.values.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: view.count) }
      view.constraint?.apply(p, count: view.count)
    }
    return Summary(layers: file.layersWithWeights.count, tensors: pairs.count)
  }

  /// A Flip layer with variables: its index, name and views (trainable first).
  struct FlipLayer {
    var index: Int
    var name: String
    var views: [ParameterView]

    /// "Flip's quant_conv2d (layer 3)".
    var short: String { "Flip's \(name) (layer \(index))" }
    /// The same with its variables: "Flip's quant_conv2d (layer 3: kernel [3, 3, 64, 64])".
    var description: String {
      "Flip's \(name) (layer \(index): \(views.map { "\($0.role.rawValue) \($0.shape)" }.joined(separator: ", ")))"
    }
  }

  static func flipLayers(of model: Model) -> [FlipLayer] {
    model.layers.indices.compactMap { i in
      let views = model.store.views(ofLayer: i)
      return views.isEmpty ? nil : FlipLayer(index: i, name: model.layers[i].name, views: views)
    }
  }

  /// Each Flip view with the Keras weight it takes; throws every mismatch as one error.
  static func match(
    _ file: KerasWeightsFile, to model: Model, path: String
  ) throws -> [(ParameterView, KerasWeightsFile.Weight)] {
    let keras = file.layersWithWeights
    let flip = flipLayers(of: model)
    guard keras.count == flip.count else {
      throw TrainingError.modelFile(path: path, reason: countMismatch(keras, flip))
    }
    var pairs: [(ParameterView, KerasWeightsFile.Weight)] = []
    var problems: [String] = []
    for (k, f) in zip(keras, flip) {
      let (matched, wrong) = match(k, f)
      pairs += matched
      problems += wrong
    }
    guard problems.isEmpty else {
      let more = problems.count > 6 ? "; and \(problems.count - 6) more" : ""
      throw TrainingError.modelFile(
        path: path,
        reason:
          "does not fit the model (Keras layers with weights are matched to Flip's in order): \(problems.prefix(6).joined(separator: "; "))\(more)"
      )
    }
    return pairs
  }

  /// One layer pair: each Flip view's weight by role and shape, and what does not fit.
  static func match(
    _ k: KerasWeightsFile.Layer, _ f: FlipLayer
  ) -> ([(ParameterView, KerasWeightsFile.Weight)], [String]) {
    var pairs: [(ParameterView, KerasWeightsFile.Weight)] = []
    var problems: [String] = []
    for view in f.views {
      guard let w = k.weights.first(where: { $0.role == view.role.rawValue }) else {
        problems.append("Keras layer \(k.name) has no \(view.role.rawValue) for \(f.description)")
        continue
      }
      guard w.shape == view.shape else {
        problems.append(
          "Keras's \(w.name) has shape \(w.shape), the \(view.role.rawValue) of \(f.short) \(view.shape)")
        continue
      }
      pairs.append((view, w))
    }
    let roles = Set(f.views.map(\.role.rawValue))
    for w in k.weights where !roles.contains(w.role) {
      problems.append("Keras's \(w.name) (\(w.shape)) has no place in \(f.description)")
    }
    return (pairs, problems)
  }

  /// The counts, and the first position where the two lists' variables differ.
  static func countMismatch(_ keras: [KerasWeightsFile.Layer], _ flip: [FlipLayer]) -> String {
    func kerasSignature(_ l: KerasWeightsFile.Layer) -> [String] { l.weights.map { "\($0.role) \($0.shape)" }.sorted() }
    func flipSignature(_ l: FlipLayer) -> [String] { l.views.map { "\($0.role.rawValue) \($0.shape)" }.sorted() }
    let counts = "has \(keras.count) layers with weights, the model \(flip.count)"
    guard
      let i = (0..<min(keras.count, flip.count)).first(where: { kerasSignature(keras[$0]) != flipSignature(flip[$0]) })
        ?? (keras.count != flip.count ? min(keras.count, flip.count) : nil)
    else { return counts }
    let k =
      i < keras.count
      ? "Keras's \(keras[i].name) (\(kerasSignature(keras[i]).joined(separator: ", ")))" : "Keras's list has ended"
    let f = i < flip.count ? flip[i].description : "Flip's list has ended"
    return "\(counts): is it the same network? The first that differ, at position \(i + 1), are \(k) and \(f)"
  }
}
