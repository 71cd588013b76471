import FlipCLI

FlipCommand.main()
