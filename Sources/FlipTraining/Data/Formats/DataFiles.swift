import Foundation

/// The file-system calls of the ImageNet-format readers: a file's identity for the index
/// cache, a directory's entries, and a whole file mapped read-only.
enum DataFiles {
  /// What the index cache checks before it reuses a file's index: the path, the size and the
  /// modification time in nanoseconds (`stat`, following symbolic links).
  struct Signature: Equatable, Sendable {
    var path: String
    var size: Int64
    var modified: Int64

    init(path: String, size: Int64, modified: Int64) {
      self.path = path
      self.size = size
      self.modified = modified
    }

    /// The signature of the file or directory at `path`, or nil if `stat` fails.
    init?(path: String) {
      guard let s = DataFiles.status(path) else { return nil }
      self.init(path: path, size: Int64(s.st_size), modified: DataFiles.modificationNanoseconds(s))
    }
  }

  /// `stat(path)`, or nil on failure.
  static func status(_ path: String) -> stat? {
    var s = stat()
    return stat(path, &s) == 0 ? s : nil
  }

  static func modificationNanoseconds(_ s: stat) -> Int64 {
    #if canImport(Darwin)
      return Int64(s.st_mtimespec.tv_sec) * 1_000_000_000 + Int64(s.st_mtimespec.tv_nsec)
    #else
      return Int64(s.st_mtim.tv_sec) * 1_000_000_000 + Int64(s.st_mtim.tv_nsec)
    #endif
  }

  static func isDirectory(_ path: String) -> Bool {
    guard let s = status(path) else { return false }
    return s.st_mode & S_IFMT == S_IFDIR
  }

  static func isRegularFile(_ path: String) -> Bool {
    guard let s = status(path) else { return false }
    return s.st_mode & S_IFMT == S_IFREG
  }

  /// `a` before `b` in the byte order of their UTF-8 names (the order of `ls` under `LC_ALL=C`;
  /// Swift's `<` on strings compares Unicode scalars after normalization instead).
  static func byteOrder(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }

  /// `directory/name`.
  static func join(_ directory: String, _ name: String) -> String {
    directory.hasSuffix("/") ? directory + name : directory + "/" + name
  }

  /// The names in `directory` that do not start with '.', in byte order.
  static func visibleNames(in directory: String) throws(TrainingError) -> [String] {
    guard let dir = opendir(directory) else {
      let reason = String(cString: strerror(errno))
      if errno == ENOENT { throw .fileNotFound(path: directory, hint: "The directory does not exist.") }
      throw .unreadable(path: directory, reason: "cannot list the directory: \(reason)")
    }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
      }
      if !name.hasPrefix(".") { names.append(name) }
    }
    return names.sorted(by: byteOrder)
  }

  /// The visible names in `directory`, or [] if it cannot be listed (for detection).
  static func visibleNamesIfAny(in directory: String) -> [String] {
    (try? visibleNames(in: directory)) ?? []
  }

  /// `body` of the bytes of the whole file at `path`, mapped read-only (pages are read as
  /// they are touched, and belong to the page cache, not to this process's heap).
  static func withMappedFile<R>(
    _ path: String, _ body: (UnsafeRawBufferPointer) throws(TrainingError) -> R
  ) throws(TrainingError) -> R {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
      if errno == ENOENT { throw .fileNotFound(path: path, hint: "It was listed a moment ago; did it move?") }
      throw .unreadable(path: path, reason: String(cString: strerror(errno)))
    }
    defer { close(fd) }
    var s = stat()
    guard fstat(fd, &s) == 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
    let size = Int(s.st_size)
    guard size > 0 else { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
    guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
      throw .unreadable(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
    }
    defer { munmap(base, size) }
    return try body(UnsafeRawBufferPointer(start: base, count: size))
  }
}
