/// A fixed-size, 64-byte aligned block of `Float`s that owns its memory.
///
/// Every stored activation, parameter and gradient in Flip lives in one of these: they are
/// allocated once (sized for the largest batch a layer will see) and never resized in a step.
/// A smaller batch uses a prefix.
public final class FloatBuffer: @unchecked Sendable {
  public let count: Int
  public let pointer: UnsafeMutablePointer<Float>

  /// Allocates `count` floats, all set to `value`.
  public init(count: Int, value: Float = 0) {
    precondition(count >= 0, "FloatBuffer count must be non-negative")
    self.count = count
    let raw = UnsafeMutableRawPointer.allocate(
      byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
    pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    pointer.initialize(repeating: value, count: max(count, 1))
  }

  /// Allocates a copy of `values`.
  public convenience init(_ values: [Float]) {
    self.init(count: values.count)
    values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
  }

  deinit { UnsafeMutableRawPointer(pointer).deallocate() }

  /// The whole buffer as a mutable buffer pointer.
  @inlinable public var buffer: UnsafeMutableBufferPointer<Float> {
    UnsafeMutableBufferPointer(start: pointer, count: count)
  }

  /// The first `n` elements.
  @inlinable public func prefix(_ n: Int) -> UnsafeMutableBufferPointer<Float> {
    UnsafeMutableBufferPointer(start: pointer, count: n)
  }

  /// Sets every element to `value`.
  public func fill(_ value: Float) { pointer.update(repeating: value, count: count) }

  /// A copy of the contents (for tests and files; never in a training step).
  public var array: [Float] { Array(buffer) }

  public subscript(i: Int) -> Float {
    get { pointer[i] }
    set { pointer[i] = newValue }
  }
}
