"""
The C{esa-tls} command: ESA-style administration commands.

Each command is a module of this package named after the command
(C{esa_tls.cli.listeners} is C{esa-tls listeners}), found by
L{esa_tls.cli.main} without any list to edit.  A command module has:

  - a docstring whose first line is the command's one-line help;
  - C{run(options: argparse.Namespace, context: CommandContext) -> int},
    returning the exit status;
  - optionally C{add_arguments(parser: argparse.ArgumentParser) -> None}
    to declare its own arguments.

Modules whose names start with C{_}, and C{main}, are not commands.
"""
