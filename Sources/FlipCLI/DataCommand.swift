import ArgumentParser
import FlipTraining
import Foundation

/// `flip data`: look into ImageNet-format data sets.
struct DataCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "data",
    abstract: "Check an ImageNet-format data set, or time its input pipeline.",
    subcommands: [DataCheckCommand.self, DataBenchCommand.self])
}

/// `flip data check DIR`: counts, layout, and every image decoded once.
struct DataCheckCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "check",
    abstract: "Count an ImageNet-format data set's images per split and class and decode every one of them.",
    discussion:
      "Exits 0 only when every image decodes cleanly; lists each file that does not (decoding errors, libjpeg warnings such as a premature end of data)."
  )

  @Argument(help: "The data set: an image folder, TFDS TFRecords or WebDataset tar shards.")
  var directory: String
  @Option(name: .long, help: "Decoding threads (default: the cores).")
  var threads: Int?
  @Flag(name: .long, help: "Print the report as one JSON object.")
  var json = false

  func run() throws {
    let report: DataCheckReport
    do {
      report = try DataCheckReport.check(
        directory: directory, threads: threads ?? ProcessInfo.processInfo.activeProcessorCount)
    } catch {
      Runtime.report(error, rank: 0)
      throw ExitCode.failure
    }
    if json {
      print(String(decoding: try JSONEncoder.sorted.encode(report), as: UTF8.self))
    } else {
      print(report.text())
    }
    if !report.bad.isEmpty { throw ExitCode.failure }
  }
}

/// `flip data bench DIR`: images per second of the input pipeline alone.
struct DataBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench",
    abstract: "Time the input pipeline alone (read, decode, crop, resize, flip, normalize) over the training split.")

  @Argument(help: "The data set: an image folder, TFDS TFRecords or WebDataset tar shards.")
  var directory: String
  @Option(name: .long, help: "The side of the square output images (default 224).")
  var imageSize = ImagePreprocessing.defaultImageSize
  @Option(name: .long, help: "Decoding threads (default 1).")
  var threads = 1
  @Option(name: .long, help: "Images to time (default: the whole training split).")
  var images: Int?
  @Option(name: .long, help: "Images per batch (default 64).")
  var batch = 64
  @Option(name: .long, help: "Training augmentation: none, crop or crop-flip (default crop-flip).")
  var augment = AugmentationMode.cropFlip
  @Flag(name: .long, help: "Print one line: a JSON object with images_per_second.")
  var json = false

  func run() throws {
    do {
      let result = try DataBenchResult.run(
        directory: directory, preprocessing: ImagePreprocessing(imageSize: imageSize, augment: augment),
        threads: threads, images: images, batch: batch)
      if json {
        print(String(decoding: try JSONEncoder.sorted.encode(result), as: UTF8.self))
      } else {
        print(
          String(
            format: "%.0f images/s (%d images of %d×%d in %.2f s, %d thread%@, %@)", result.imagesPerSecond,
            result.images, imageSize, imageSize, result.seconds, threads, threads == 1 ? "" : "s", result.layout))
      }
    } catch {
      Runtime.report(error, rank: 0)
      throw ExitCode.failure
    }
  }
}
