import FlipTensor

/// One batch as a feed hands it over: valid until the feed's next `next()` or `begin`.
public struct FedBatch {
  /// (count, H, W, C) model input.
  public var images: UnsafeMutablePointer<Float>
  public var labels: UnsafeMutablePointer<Int32>
  public var count: Int
  /// Images of the batch that stand in for a bad one (`BadImagePolicy.replace`).
  public var badImages: Int
}

/// Hands a trainer its batches in the order it asks for them. A pass (an epoch's batches
/// on this rank, or an evaluation's) is announced whole by `begin`, so a feed may prepare
/// batches ahead while the model computes.
public protocol BatchFeed: AnyObject {
  /// The batches of the coming pass, in the order `next()` will be asked for them (each the
  /// sample indices, in order), and the epoch whose random draws they take.
  func begin(epoch: Int, batches: [ArraySlice<Int>]) throws
  /// The next batch of the pass. Throws what filling it threw (a bad file under
  /// `--bad-images error`, an unreadable file).
  func next() throws -> FedBatch
  /// Ends the pass early (a stop request); work prepared ahead is dropped.
  func end()
}

/// The samples of one split of a data set: what a trainer checks, and a feed of its batches.
public protocol SampleSet: Sendable {
  var count: Int { get }
  /// (H, W, C) of one model input.
  var sampleShape: [Int] { get }
  var classes: Int { get }
  /// A feed of batches of at most `batch` samples: transformed for training (`augmentation`
  /// applies to in-memory sets; image sets carry their own preprocessing), drawn from `seed`,
  /// or for evaluation. `compute`'s threads may fill them.
  func makeFeed(batch: Int, training: Bool, seed: UInt64, augmentation: Augmentation?, compute: Compute) -> BatchFeed
}

extension SampleSet {
  public var sampleSize: Int { sampleShape.reduce(1, *) }
}

extension Dataset: SampleSet {
  public func makeFeed(batch: Int, training: Bool, seed: UInt64, augmentation: Augmentation?, compute: Compute)
    -> BatchFeed
  {
    InMemoryFeed(
      dataset: self, batch: batch, training: training, seed: seed, augmentation: augmentation, compute: compute)
  }
}

/// The feed of an in-memory data set: each batch filled when asked for, on the caller's
/// thread and `compute`'s threads (copying bytes out of memory is faster than handing
/// batches between threads).
final class InMemoryFeed: BatchFeed {
  let dataset: Dataset
  let training: Bool
  let seed: UInt64
  let augmentation: Augmentation?
  let compute: Compute
  private let images: FloatBuffer
  private let labels: UnsafeMutablePointer<Int32>
  private let capacity: Int
  private var batches: [ArraySlice<Int>] = []
  private var epoch = 0
  private var handed = 0

  init(dataset: Dataset, batch: Int, training: Bool, seed: UInt64, augmentation: Augmentation?, compute: Compute) {
    self.dataset = dataset
    self.training = training
    self.seed = seed
    self.augmentation = augmentation
    self.compute = compute
    capacity = batch
    images = FloatBuffer(count: batch * dataset.sampleSize)
    labels = .allocate(capacity: max(1, batch))
  }

  deinit { labels.deallocate() }

  func begin(epoch: Int, batches: [ArraySlice<Int>]) throws {
    precondition(batches.allSatisfy { $0.count <= capacity }, "a batch larger than the feed's capacity")
    self.epoch = epoch
    self.batches = batches
    handed = 0
  }

  func next() throws -> FedBatch {
    precondition(handed < batches.count, "next() past the announced batches")
    let part = batches[handed]
    handed += 1
    if training {
      dataset.fill(
        part, images: images.pointer, labels: labels, augmentation: augmentation, seed: seed, epoch: epoch,
        compute: compute)
    } else {
      dataset.fill(part, images: images.pointer, labels: labels, compute: compute)
    }
    return FedBatch(images: images.pointer, labels: labels, count: part.count, badImages: 0)
  }

  func end() {
    batches = []
    handed = 0
  }
}
