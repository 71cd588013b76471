import FlipTensor
import Foundation

/// The image-folder layout: `DIR/train/<class>/<image>` and `DIR/val/<class>/<image>` (or
/// `DIR/validation/…`). Classes are the split's folders in byte order of their names, images
/// the files of a class folder in byte order; names starting with '.' are ignored, and so are
/// files directly in the split folder. Images are not opened: any file counts.
enum ImageFolder {
  /// One split's listing: its class folders' names, and its images with the position of their
  /// class folder as the label.
  struct Listing {
    var classNames: [String]
    var index: SampleIndex
    /// The split folder and its class folders: a changed folder (an image added, removed or
    /// renamed changes its modification time) makes the cached listing stale.
    var signatures: [DataFiles.Signature]
  }

  /// Lists the split folder `directory`. Throws if a class folder holds no images, or the
  /// split has no class folders.
  static func list(_ directory: String) throws(TrainingError) -> Listing {
    guard let splitSignature = DataFiles.Signature(path: directory) else {
      throw .fileNotFound(path: directory, hint: "An image-folder data set holds train/<class>/<image>.")
    }
    let classNames = try DataFiles.visibleNames(in: directory).filter {
      DataFiles.isDirectory(DataFiles.join(directory, $0))
    }
    guard !classNames.isEmpty else {
      throw .corruptData(path: directory, reason: "the split has no samples (no class folders in it)")
    }
    let classDirectories = classNames.map { DataFiles.join(directory, $0) }
    // Each folder's signature is taken before it is listed, so a file added meanwhile makes
    // the cached listing stale, never the other way round.
    var signatures = [splitSignature]
    for folder in classDirectories {
      guard let signature = DataFiles.Signature(path: folder) else {
        throw .unreadable(path: folder, reason: "cannot stat the class folder")
      }
      signatures.append(signature)
    }
    // A folder's images are listed and their sizes read on one thread per core (a million
    // stat calls on a network file system take a while).
    let listed = parallelMap(classDirectories.count) { (c: Int) -> Result<([String], [UInt32]), TrainingError> in
      do throws(TrainingError) {
        return .success(try images(in: classDirectories[c]))
      } catch {
        return .failure(error)
      }
    }
    var files: [String] = []
    var lengths: [UInt32] = []
    var labels: [Int32] = []
    for (c, result) in listed.enumerated() {
      let (paths, sizes) = try result.get()
      files += paths
      lengths += sizes
      labels += repeatElement(Int32(c), count: paths.count)
    }
    let index = SampleIndex(
      layout: .imageFolder, files: files, fileNumbers: (0..<Int32(files.count)).map { $0 },
      offsets: [Int64](
        repeating: 0, count: files.count), lengths: lengths, labels: labels)
    return Listing(classNames: classNames, index: index, signatures: signatures)
  }

  /// The files of the class folder `directory` (paths and sizes, in byte order of names).
  private static func images(in directory: String) throws(TrainingError) -> ([String], [UInt32]) {
    var paths: [String] = []
    var sizes: [UInt32] = []
    for name in try DataFiles.visibleNames(in: directory) {
      let path = DataFiles.join(directory, name)
      guard let s = DataFiles.status(path), s.st_mode & S_IFMT == S_IFREG else { continue }
      guard s.st_size <= Int64(UInt32.max) else {
        throw .corruptData(path: path, reason: "\(s.st_size) bytes is too large for an image (4 GiB at most)")
      }
      paths.append(path)
      sizes.append(UInt32(s.st_size))
    }
    guard !paths.isEmpty else {
      throw .corruptData(path: directory, reason: "the class folder holds no images (every class needs at least one)")
    }
    return (paths, sizes)
  }

  /// The train and validation listings as one data set: the validation classes must be among
  /// the training classes, and their labels become positions among them.
  static func combine(train: Listing, validation: Listing) throws(TrainingError) -> (
    classNames: [String], train: SampleIndex, validation: SampleIndex
  ) {
    var position: [String: Int32] = [:]
    for (c, name) in train.classNames.enumerated() { position[name] = Int32(c) }
    var map: [Int32] = []
    for name in validation.classNames {
      guard let c = position[name] else {
        let path = validation.signatures[0].path
        throw .corruptData(
          path: DataFiles.join(path, name),
          reason:
            "the validation class \(name) is not a training class (the training folder \(train.signatures[0].path) has no folder \(name)); the validation classes must be among the training classes"
        )
      }
      map.append(c)
    }
    return (train.classNames, train.index, validation.index.relabeled(map))
  }
}

/// `body(i)` for `i` in `0..<count`, on up to one thread per core (Flip's compute threads);
/// the results in order of `i`.
func parallelMap<T>(_ count: Int, _ body: (Int) -> T) -> [T] {
  let results = UnsafeMutableBufferPointer<T?>.allocate(capacity: count)
  results.initialize(repeating: nil)
  defer {
    results.deinitialize()
    results.deallocate()
  }
  // Each range writes its own elements.
  Compute(threads: ProcessInfo.processInfo.activeProcessorCount).forRanges(count: count, grain: 1) { range in
    for i in range { results[i] = body(i) }
  }
  return results.map { $0! }
}
