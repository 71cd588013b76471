import FlipTensor
import Foundation

/// `bad_images` values: what a file that does not decode cleanly does to a run.
public enum BadImagePolicy: String, CaseIterable, Sendable, Codable {
  /// Report it once (path and rank), count it, and use a deterministic other sample instead.
  case replace
  /// Stop the job naming the file.
  case error
}

/// One split of ImageNet-format data: its sample index, read and decoded on demand in
/// background threads (`PrefetchingImageFeed`).
public struct StreamedImages: SampleSet {
  public let index: SampleIndex
  public let preprocessing: ImagePreprocessing
  public let classes: Int
  /// Decoding threads of each feed.
  public var threads: Int
  /// Batches prepared ahead of the one in use.
  public var prefetch: Int
  public var badImages: BadImagePolicy
  /// Reports each bad file once, however many feeds and epochs meet it.
  let reports: BadImageReports

  public init(
    index: SampleIndex, preprocessing: ImagePreprocessing, classes: Int, threads: Int, prefetch: Int = 2,
    badImages: BadImagePolicy = .replace, report: @escaping @Sendable (String) -> Void = { _ in }
  ) {
    self.index = index
    self.preprocessing = preprocessing
    self.classes = classes
    self.threads = max(1, threads)
    self.prefetch = max(1, prefetch)
    self.badImages = badImages
    reports = BadImageReports(report)
  }

  public var count: Int { index.count }
  public var sampleShape: [Int] { preprocessing.sampleShape }

  public func makeFeed(batch: Int, training: Bool, seed: UInt64, augmentation: Augmentation?, compute: Compute)
    -> BatchFeed
  {
    PrefetchingImageFeed(images: self, batch: batch, training: training, seed: seed)
  }

  /// The sample that stands in for bad sample `i` on `attempt` (0, 1, …): drawn from
  /// `(seed, i, attempt)` alone, so every rank and a resumed run pick the same one.
  func replacement(for i: Int, attempt: Int, seed: UInt64) -> Int {
    var g = Augmentation.generator(seed: seed ^ 0xBAD1_3A6E_5EED_0001, epoch: attempt, index: i)
    return g.nextInt(below: count)
  }
}

/// Where bad files are reported: each sample once (the message names its file).
final class BadImageReports: @unchecked Sendable {
  private let lock = NSLock()
  private var reported = Set<Int>()
  private let report: @Sendable (String) -> Void

  init(_ report: @escaping @Sendable (String) -> Void) { self.report = report }

  func report(sample i: Int, _ message: @autoclosure () -> String) {
    guard lock.withLock({ reported.insert(i).inserted }) else { return }
    report(message())
  }
}

/// Decodes the batches of a pass in `threads` background threads, at most `prefetch` batches
/// ahead of the one in use, into `prefetch + 1` fixed buffers: memory is bounded by the
/// prefetch, not by the data set. The threads take samples in pass order (the earliest
/// unfinished batch first), each sample is written to its own place, so a batch's contents do
/// not depend on which thread decoded what.
final class PrefetchingImageFeed: BatchFeed {
  private let state: FeedState

  init(images: StreamedImages, batch: Int, training: Bool, seed: UInt64) {
    state = FeedState(images: images, batch: batch, training: training, seed: seed)
    for _ in 0..<images.threads {
      let s = state
      let thread = Thread { s.work() }
      thread.name = "flip-decode"
      thread.stackSize = 1 << 20
      thread.start()
    }
  }

  deinit { state.shutDown() }

  func begin(epoch: Int, batches: [ArraySlice<Int>]) throws { state.begin(epoch: epoch, batches: batches) }
  func next() throws -> FedBatch { try state.next() }
  func end() { state.begin(epoch: 0, batches: []) }
}

/// The feed's buffers and work queue, shared by its threads (all of it under `lock`, but the
/// decoding itself and the slot memory a thread has claimed).
private final class FeedState: @unchecked Sendable {
  let images: StreamedImages
  let training: Bool
  let seed: UInt64
  let sampleSize: Int
  let slots: Int
  let pixels: FloatBuffer
  let labels: UnsafeMutablePointer<Int32>
  let capacity: Int

  let lock = NSCondition()
  var batches: [ArraySlice<Int>] = []
  var epoch = 0
  /// Batches handed to the consumer; batch `handed − 1` is in use.
  var handed = 0
  /// The next sample to claim: batch and position in it.
  var cursor = (batch: 0, sample: 0)
  /// Per slot: the samples of its batch not yet written, and the bad ones replaced.
  var remaining: [Int]
  var bad: [Int]
  /// Claims being decoded (a new pass waits for them: they write into slots), and whether a
  /// new pass is waiting.
  var inFlight = 0
  var draining = false
  var failure: Error?
  var stopping = false
  var running = 0

  init(images: StreamedImages, batch: Int, training: Bool, seed: UInt64) {
    self.images = images
    self.training = training
    self.seed = seed
    sampleSize = images.sampleShape.reduce(1, *)
    slots = images.prefetch + 1
    capacity = batch
    pixels = FloatBuffer(count: slots * batch * sampleSize)
    labels = .allocate(capacity: slots * max(1, batch))
    remaining = Array(repeating: 0, count: slots)
    bad = Array(repeating: 0, count: slots)
    running = images.threads
  }

  deinit { labels.deallocate() }

  func begin(epoch: Int, batches: [ArraySlice<Int>]) {
    precondition(batches.allSatisfy { $0.count <= capacity }, "a batch larger than the feed's capacity")
    lock.lock()
    defer { lock.unlock() }
    draining = true
    while inFlight > 0 { lock.wait() }
    draining = false
    self.epoch = epoch
    self.batches = batches
    handed = 0
    cursor = (0, 0)
    failure = nil
    for k in 0..<slots { resetSlot(for: k) }
    lock.broadcast()
  }

  func next() throws -> FedBatch {
    lock.lock()
    defer { lock.unlock() }
    let k = handed
    precondition(k < batches.count, "next() past the announced batches")
    let s = k % slots
    while remaining[s] > 0 && failure == nil { lock.wait() }
    if let failure { throw failure }
    handed += 1
    // The slot of the batch before this one is free again: it takes batch k − 1 + slots.
    if k >= 1 { resetSlot(for: k - 1 + slots) }
    lock.broadcast()
    return FedBatch(
      images: pixels.pointer + s * capacity * sampleSize, labels: labels + s * capacity, count: batches[k].count,
      badImages: bad[s])
  }

  /// Makes batch `k`'s slot ready to be filled (called under the lock); past the pass's last
  /// batch, empty.
  private func resetSlot(for k: Int) {
    remaining[k % slots] = k < batches.count ? batches[k].count : 0
    bad[k % slots] = 0
  }

  /// Whether batch `k` may be filled now: its slot is not held by the batch in use
  /// (`handed − 1`) or one before it.
  private func claimable(_ k: Int) -> Bool { k < batches.count && k < max(handed - 1, 0) + slots }

  /// The next sample to decode, or nil to wait (called under the lock).
  private func claim() -> (batch: Int, sample: Int)? {
    while cursor.batch < batches.count && cursor.sample >= batches[cursor.batch].count {
      cursor = (cursor.batch + 1, 0)
    }
    guard !draining, claimable(cursor.batch) else { return nil }
    let c = cursor
    cursor.sample += 1
    return c
  }

  func work() {
    let reader = ImageSampleReader()
    lock.lock()
    while true {
      if stopping { break }
      guard failure == nil, let c = claim() else {
        lock.wait()
        continue
      }
      inFlight += 1
      let batch = batches[c.batch]
      let i = batch[batch.startIndex + c.sample]
      let epoch = self.epoch
      lock.unlock()
      let s = c.batch % slots
      let out = pixels.pointer + (s * capacity + c.sample) * sampleSize
      let result = decode(i, epoch: epoch, reader: reader, into: out)
      lock.lock()
      inFlight -= 1
      switch result {
      case .success(let (label, replaced)):
        labels[s * capacity + c.sample] = label
        bad[s] += replaced ? 1 : 0
        remaining[s] -= 1
        // Only a finished batch (or a new pass, which waits for in-flight claims) concerns
        // anyone waiting; the other threads find the next sample without being woken.
        if remaining[s] == 0 || draining { lock.broadcast() }
      case .failure(let error):
        if failure == nil { failure = error }
        lock.broadcast()
      }
    }
    running -= 1
    lock.broadcast()
    lock.unlock()
  }

  /// Sample `i` into `out`, or the first of its replacements that decodes cleanly
  /// (`BadImagePolicy.replace`); its label, and whether it was replaced.
  private func decode(_ i: Int, epoch: Int, reader: ImageSampleReader, into out: UnsafeMutablePointer<Float>)
    -> Result<(Int32, Bool), Error>
  {
    let index = images.index
    var candidate = i
    for attempt in 0...16 {
      do throws(ImageSampleFailure) {
        try reader.load(
          candidate, from: index, preprocessing: images.preprocessing, training: training, seed: seed, epoch: epoch,
          drawIndex: candidate, into: out)
        return .success((index.label(of: candidate), attempt > 0))
      } catch {
        switch error {
        case .unreadable(let e):
          // A file that cannot be read stops the job whatever the policy: the fault is the file
          // system's, and replacing the sample would make the run depend on it.
          return .failure(e)
        case .bad(let message):
          let path = index.describe(candidate)
          if images.badImages == .error {
            return .failure(
              TrainingError.corruptData(
                path: path,
                reason:
                  "\(message). Remove or replace the file, or pass --bad-images replace to train on with another image in its place"
              ))
          }
          images.reports.report(sample: candidate, "\(path): \(message); another image stands in for it")
        }
      }
      candidate = images.replacement(for: i, attempt: attempt, seed: seed)
    }
    return .failure(
      TrainingError.datasetMismatch(
        "sample \(i) (\(index.describe(i))) and its 16 replacements are all bad images; run `flip data check` on the data set"
      ))
  }

  func shutDown() {
    lock.lock()
    stopping = true
    lock.broadcast()
    while running > 0 { lock.wait() }
    lock.unlock()
  }
}
