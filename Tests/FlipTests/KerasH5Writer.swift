import CHDF5
import Foundation

@testable import FlipTraining

/// Writes small Keras-layout HDF5 weight files for the reader's tests, through the HDF5 C API
/// as h5py does: the root's `layer_names`, each layer's `weight_names` (an empty float64 array
/// for a layer without variables, as h5py stores Keras's empty list), and the datasets.
struct KerasH5Writer {
  enum Strings { case fixedLength, variableLength }
  var strings = Strings.fixedLength
  /// Under `model_weights`, as `model.save("m.h5")` writes them.
  var underModelWeights = false
  /// Whether to write `layer_names` (without it the file is not Keras's).
  var layerNames = true
  /// Split `layer_names` into `layer_names0`, `layer_names1`, ... of this many names each, as
  /// Keras does beyond HDF5's 64 KB header limit.
  var layerNamesChunk: Int?
  /// Weights (by Keras name) written as 32-bit integers instead of floats.
  var integerWeights: Set<String> = []

  func write(_ file: KerasWeightsFile, to path: String) {
    HDF5.locked {
      let f = H5Fcreate(path, flip_h5_truncate(), flip_h5_default(), flip_h5_default())
      precondition(f >= 0, "cannot create \(path)")
      defer { H5Fclose(f) }
      let top =
        underModelWeights ? H5Gcreate2(f, "model_weights", flip_h5_default(), flip_h5_default(), flip_h5_default()) : f
      defer { if top != f { H5Gclose(top) } }
      let names = file.layers.map(\.name)
      if let chunk = layerNamesChunk {
        for (i, start) in stride(from: 0, to: names.count, by: chunk).enumerated() {
          writeStrings(Array(names[start..<min(start + chunk, names.count)]), attribute: "layer_names\(i)", of: top)
        }
      } else if layerNames {
        writeStrings(names, attribute: "layer_names", of: top)
      }
      for layer in file.layers {
        let g = H5Gcreate2(top, layer.name, flip_h5_default(), flip_h5_default(), flip_h5_default())
        defer { H5Gclose(g) }
        writeStrings(layer.weights.map(\.name), attribute: "weight_names", of: g)
        for w in layer.weights { write(w, in: g) }
      }
    }
  }

  private func write(_ w: KerasWeightsFile.Weight, in group: hid_t) {
    let parts = w.name.split(separator: "/").map(String.init)
    var parent = group
    var opened: [hid_t] = []
    for part in parts.dropLast() {
      parent =
        H5Lexists(parent, part, flip_h5_default()) > 0
        ? H5Gopen2(parent, part, flip_h5_default())
        : H5Gcreate2(parent, part, flip_h5_default(), flip_h5_default(), flip_h5_default())
      opened.append(parent)
    }
    defer { for g in opened.reversed() { H5Gclose(g) } }
    precondition(w.values.count == w.shape.reduce(1, *), "\(w.name): \(w.values.count) values for shape \(w.shape)")
    let dims = w.shape.map { hsize_t($0) }
    let space = H5Screate_simple(Int32(dims.count), dims, nil)
    defer { H5Sclose(space) }
    let integer = integerWeights.contains(w.name)
    let type = integer ? flip_h5_native_int() : flip_h5_native_float()
    let d = H5Dcreate2(parent, parts.last!, type, space, flip_h5_default(), flip_h5_default(), flip_h5_default())
    defer { H5Dclose(d) }
    if integer {
      let ints = w.values.map { Int32($0) }
      _ = H5Dwrite(d, type, flip_h5_all(), flip_h5_all(), flip_h5_default(), ints)
    } else {
      _ = H5Dwrite(d, type, flip_h5_all(), flip_h5_all(), flip_h5_default(), w.values)
    }
  }

  private func writeStrings(_ values: [String], attribute name: String, of object: hid_t) {
    var dims = [hsize_t(values.count)]
    let space = H5Screate_simple(1, &dims, nil)
    defer { H5Sclose(space) }
    if values.isEmpty {
      let a = H5Acreate2(object, name, flip_h5_native_double(), space, flip_h5_default(), flip_h5_default())
      H5Aclose(a)
      return
    }
    let type = H5Tcopy(flip_h5_c_s1())
    defer { H5Tclose(type) }
    switch strings {
    case .fixedLength:
      let width = values.map(\.utf8.count).max()!
      H5Tset_size(type, width)
      H5Tset_strpad(type, H5T_STR_NULLPAD)
      let bytes = values.flatMap { Array($0.utf8) + Array(repeating: 0, count: width - $0.utf8.count) }
      let a = H5Acreate2(object, name, type, space, flip_h5_default(), flip_h5_default())
      H5Awrite(a, type, bytes)
      H5Aclose(a)
    case .variableLength:
      H5Tset_size(type, flip_h5_variable())
      H5Tset_cset(type, H5T_CSET_UTF8)
      let copies = values.map { strdup($0) }
      defer { for c in copies { free(c) } }
      let a = H5Acreate2(object, name, type, space, flip_h5_default(), flip_h5_default())
      H5Awrite(a, type, copies)
      H5Aclose(a)
    }
  }
}
