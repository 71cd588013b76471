import ArgumentParser

/// `flip checkpoint`: look into and convert Flip files.
struct CheckpointCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "checkpoint",
    abstract: "Inspect or export Flip files (models, checkpoints, binary exports).",
    subcommands: [CheckpointInspectCommand.self, CheckpointExportCommand.self])
}
