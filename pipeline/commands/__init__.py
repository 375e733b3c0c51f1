"""One module per `dst` subcommand: configure(parser) and run(args) -> int."""
