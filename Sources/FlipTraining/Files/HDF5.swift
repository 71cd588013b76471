import CHDF5
import FlipBNN
import Foundation

/// The few HDF5 calls Keras weight files need: groups, string-array attributes (fixed- or
/// variable-length) and floating-point datasets, each failure a `TrainingError` naming the
/// file and the object.
///
/// Debian's HDF5 is the serial build, which is not thread-safe: every use goes through
/// `HDF5.locked`, which holds one process-wide lock (Swift Testing runs tests in parallel).
enum HDF5 {
  /// The 8 bytes every HDF5 file starts with (at offset 0 for every file Keras writes).
  static let signature: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0D, 0x0A, 0x1A, 0x0A]

  private static let lock = NSLock()

  /// Runs `body` with HDF5 to itself, its error printing off (Flip reports errors itself).
  static func locked<T>(_ body: () throws -> T) rethrows -> T {
    lock.lock()
    defer { lock.unlock() }
    flip_h5_silence_errors()
    return try body()
  }

  /// Whether the file at `path` starts with HDF5's signature.
  static func hasSignature(path: String) -> Bool {
    guard let handle = FileHandle(forReadingAtPath: path) else { return false }
    defer { try? handle.close() }
    let head = (try? handle.read(upToCount: signature.count)) ?? Data()
    return Array(head) == signature
  }

  /// The innermost description on HDF5's error stack (what went wrong, e.g. "truncated file:
  /// eof = ..."), or "" when the stack is empty.
  static func lastError() -> String {
    var message = ""
    withUnsafeMutablePointer(to: &message) { context in
      _ = H5Ewalk2(
        flip_h5_error_stack(), H5E_WALK_UPWARD,
        { n, error, context in
          guard n == 0, let error, let text = error.pointee.desc, let context else { return 0 }
          context.assumingMemoryBound(to: String.self).pointee = String(cString: text)
          return 0
        }, context)
    }
    return message
  }
}

/// An open HDF5 object (file, group, attribute, dataset, dataspace or type) that closes itself.
final class HDF5Handle {
  let id: hid_t
  private let close: (hid_t) -> herr_t

  /// Wraps `id`, or throws `failure` (plus HDF5's own reason) when it is negative.
  init(_ id: hid_t, close: @escaping (hid_t) -> herr_t, path: String, failure: @autoclosure () -> String) throws {
    guard id >= 0 else {
      let detail = HDF5.lastError()
      throw TrainingError.corruptData(path: path, reason: failure() + (detail.isEmpty ? "" : " (HDF5: \(detail))"))
    }
    self.id = id
    self.close = close
  }

  deinit { _ = close(id) }
}

/// A group (or the file's root) of an HDF5 file being read.
struct HDF5Group {
  let handle: HDF5Handle
  let path: String
  /// The group's name in the file, for messages (`/` for the root).
  let name: String

  /// Opens `path` read-only; errors say when it is missing or not HDF5.
  static func openFile(path: String) throws -> (file: HDF5Handle, root: HDF5Group) {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
      throw TrainingError.fileNotFound(path: path, hint: "Give the .h5 file written by Keras's model.save_weights.")
    }
    guard !isDirectory.boolValue else {
      throw TrainingError.unreadable(
        path: path, reason: "it is a directory, not the .h5 file of Keras's model.save_weights")
    }
    guard HDF5.hasSignature(path: path) else {
      throw TrainingError.modelFile(
        path: path,
        reason:
          "is not an HDF5 file (it does not start with HDF5's signature); give the .h5 file of Keras's model.save_weights"
      )
    }
    let file = try HDF5Handle(
      H5Fopen(path, flip_h5_read_only(), flip_h5_default()), close: H5Fclose, path: path,
      failure: "HDF5 cannot open it (truncated or damaged?)")
    let root = try HDF5Handle(
      H5Gopen2(file.id, "/", flip_h5_default()), close: H5Gclose, path: path, failure: "cannot open its root group")
    return (file, HDF5Group(handle: root, path: path, name: "/"))
  }

  /// Whether the group has a link (group or dataset) called `name`.
  func has(_ name: String) -> Bool { H5Lexists(handle.id, name, flip_h5_default()) > 0 }

  func group(_ name: String) throws -> HDF5Group {
    let id = H5Gopen2(handle.id, name, flip_h5_default())
    let h = try HDF5Handle(id, close: H5Gclose, path: path, failure: "has no group '\(name)' in \(self.name)")
    return HDF5Group(handle: h, path: path, name: self.name == "/" ? "/" + name : self.name + "/" + name)
  }
}

extension HDF5Group {
  /// The string array in attribute `name`, or nil when there is none. Keras splits an attribute
  /// beyond HDF5's 64 KB header limit into `name0`, `name1`, ...: those are joined.
  func strings(attribute name: String) throws -> [String]? {
    if H5Aexists(handle.id, name) > 0 { return try readStrings(attribute: name) }
    var chunks: [String]?
    var index = 0
    while H5Aexists(handle.id, "\(name)\(index)") > 0 {
      chunks = (chunks ?? []) + (try readStrings(attribute: "\(name)\(index)"))
      index += 1
    }
    return chunks
  }

  /// One attribute's strings: fixed-length (h5py's `S` arrays, older Keras) or variable-length
  /// (newer h5py). An empty attribute of any type (Keras's empty `weight_names`) is [].
  private func readStrings(attribute name: String) throws -> [String] {
    let what = "attribute '\(name)' of \(self.name)"
    let attribute = try HDF5Handle(
      H5Aopen(handle.id, name, flip_h5_default()), close: H5Aclose, path: path, failure: "cannot open \(what)")
    let space = try HDF5Handle(H5Aget_space(attribute.id), close: H5Sclose, path: path, failure: "cannot read \(what)")
    let count = Int(H5Sget_simple_extent_npoints(space.id))
    guard count > 0 else { return [] }
    let type = try HDF5Handle(H5Aget_type(attribute.id), close: H5Tclose, path: path, failure: "cannot read \(what)")
    guard H5Tget_class(type.id) == H5T_STRING else {
      throw TrainingError.modelFile(path: path, reason: "\(what) holds \(HDF5.describe(type: type.id)), not strings")
    }
    let memory = try HDF5Handle(H5Tcopy(flip_h5_c_s1()), close: H5Tclose, path: path, failure: "cannot read \(what)")
    H5Tset_cset(memory.id, H5Tget_cset(type.id))
    if H5Tis_variable_str(type.id) > 0 {
      H5Tset_size(memory.id, flip_h5_variable())
      var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count)
      guard H5Aread(attribute.id, memory.id, &pointers) >= 0 else {
        throw TrainingError.corruptData(path: path, reason: "cannot read \(what) (HDF5: \(HDF5.lastError()))")
      }
      defer { for p in pointers { H5free_memory(p) } }
      return pointers.map { $0.map { String(cString: $0) } ?? "" }
    }
    let size = H5Tget_size(type.id)
    H5Tset_size(memory.id, size)
    H5Tset_strpad(memory.id, H5T_STR_NULLPAD)
    var bytes = [UInt8](repeating: 0, count: count * size)
    guard H5Aread(attribute.id, memory.id, &bytes) >= 0 else {
      throw TrainingError.corruptData(path: path, reason: "cannot read \(what) (HDF5: \(HDF5.lastError()))")
    }
    return (0..<count).map { i in
      let field = bytes[(i * size)..<((i + 1) * size)]
      return String(decoding: field.prefix { $0 != 0 }, as: UTF8.self)
    }
  }

  /// The dataset at `name` (a path below this group) as Float32, with its shape; HDF5 converts
  /// other floating-point types. Anything but floating point is an error naming the dataset.
  func floats(dataset name: String) throws -> (shape: [Int], values: [Float]) {
    let what = "dataset '\(name)' in \(self.name)"
    // (A path whose intermediate group is missing makes H5Lexists fail, < 0: missing too.)
    guard H5Lexists(handle.id, name, flip_h5_default()) > 0 else {
      throw TrainingError.modelFile(path: path, reason: "has no \(what) (weight_names lists it)")
    }
    let dataset = try HDF5Handle(
      H5Dopen2(handle.id, name, flip_h5_default()), close: H5Dclose, path: path, failure: "cannot open \(what)")
    let type = try HDF5Handle(H5Dget_type(dataset.id), close: H5Tclose, path: path, failure: "cannot read \(what)")
    guard H5Tget_class(type.id) == H5T_FLOAT else {
      throw TrainingError.modelFile(
        path: path, reason: "\(what) holds \(HDF5.describe(type: type.id)), not floating-point weights")
    }
    let space = try HDF5Handle(H5Dget_space(dataset.id), close: H5Sclose, path: path, failure: "cannot read \(what)")
    let rank = Int(H5Sget_simple_extent_ndims(space.id))
    var dims = [hsize_t](repeating: 0, count: max(rank, 1))
    guard rank >= 0, H5Sget_simple_extent_dims(space.id, &dims, nil) >= 0 else {
      throw TrainingError.corruptData(path: path, reason: "cannot read the shape of \(what)")
    }
    let shape = dims.prefix(rank).map { Int($0) }
    guard shape.reduce(1.0, { $0 * Double($1) }) <= Double(Model.largestTensor) else {
      throw TrainingError.modelFile(path: path, reason: "\(what) has shape \(shape), more than any model variable")
    }
    var values = [Float](repeating: 0, count: shape.reduce(1, *))
    guard H5Dread(dataset.id, flip_h5_native_float(), flip_h5_all(), flip_h5_all(), flip_h5_default(), &values) >= 0
    else {
      throw TrainingError.corruptData(
        path: path, reason: "cannot read \(what) (HDF5: \(HDF5.lastError())); the file may be truncated")
    }
    return (shape, values)
  }
}

extension HDF5 {
  /// A datatype in words, for errors: "32-bit integers", "strings", ...
  static func describe(type: hid_t) -> String {
    let bits = H5Tget_size(type) * 8
    switch H5Tget_class(type) {
    case H5T_INTEGER: return "\(bits)-bit integers"
    case H5T_FLOAT: return "\(bits)-bit floats"
    case H5T_STRING: return "strings"
    case H5T_COMPOUND: return "compound records"
    default: return "values of HDF5 type class \(H5Tget_class(type).rawValue)"
    }
  }
}
