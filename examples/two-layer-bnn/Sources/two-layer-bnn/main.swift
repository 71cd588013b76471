// Trains a two-layer binary neural network with Flip's library, without the `flip` command:
// a model from layer specs, Adam, and a loop of forward, backward and optimizer steps.
import FlipBNN
import FlipTensor
import Foundation

// Data: four Gaussian clusters in 16 dimensions, one per class (generated: nothing to download).
let (classes, dims) = (4, 16)
func gaussian(_ random: inout SplitMix64) -> Float {  // Box–Muller
  let u = max(random.nextUnitFloat(), 1e-7), v = random.nextUnitFloat()
  return (-2 * log(u)).squareRoot() * cos(2 * .pi * v)
}
func clusters(_ count: Int, seed: UInt64) -> (x: [Float], labels: [Int32]) {
  var random = SplitMix64(seed: 7)  // the same centers for every set
  let centers = (0..<classes).map { _ in (0..<dims).map { _ in gaussian(&random) } }
  random = SplitMix64(seed: seed)
  let labels = (0..<count).map { _ in Int32(random.nextInt(below: classes)) }
  let x = labels.flatMap { label in centers[Int(label)].map { $0 + 0.8 * gaussian(&random) } }
  return (x, labels)
}
let train = clusters(1024, seed: 1), test = clusters(512, seed: 2)

// The model, in Larq's terms: QuantDense(64, kernel ste_sign, weight_clip) → BatchNormalization
// → QuantDense(4, input and kernel ste_sign, weight_clip) → BatchNormalization → softmax.
var hidden = LayerSpec(.quantDense)
hidden.units = 64
hidden.kernelQuantizer = QuantizerSpec("ste_sign")
hidden.kernelConstraint = .weightClip(clipValue: 1)
var output = hidden
output.units = classes
output.inputQuantizer = QuantizerSpec("ste_sign")
var softmax = LayerSpec(.activation)
softmax.activation = .softmax
let specs = [hidden, LayerSpec(.batchNormalization), output, LayerSpec(.batchNormalization), softmax]
let model = try Model(specs: specs, inputShape: [dims], seed: 1)

let batch = 32
model.allocate(maxBatch: test.labels.count)
let optimizer = Adam(learningRate: .constant(0.01))
try optimizer.prepare(store: model.store)
let loss = SparseCategoricalCrossentropy(classes: classes)

var accuracy = 0.0
for epoch in 1...5 {
  var (lossSum, correct) = (0.0, 0)
  for start in stride(from: 0, to: train.labels.count, by: batch) {
    let x = Array(train.x[start * dims..<(start + batch) * dims])
    let labels = Array(train.labels[start..<start + batch])
    model.store.zeroGradients()
    let step = try model.accumulateGradients(x, labels: labels, batch: batch, loss: loss)
    optimizer.apply(store: model.store, clock: TrainingClock(step: optimizer.iterations, epoch: epoch - 1),
                    gradientScale: 1 / Float(batch))  // gradients are of the summed loss
    lossSum += step.lossSum
    correct += step.correct
  }
  let result = try model.evaluate(test.x, labels: test.labels, batch: test.labels.count, loss: loss)
  accuracy = Double(result.correct) / Double(test.labels.count)
  print(String(format: "epoch %d: train loss %.4f accuracy %.3f, test loss %.4f accuracy %.3f", epoch,
               lossSum / Double(train.labels.count), Double(correct) / Double(train.labels.count),
               result.lossSum / Double(test.labels.count), accuracy))
}
// Chance is 1/4: a working library gets far above it.
guard accuracy >= 0.8 else {
  print("test accuracy \(accuracy) is too low: something is broken")
  exit(1)
}
