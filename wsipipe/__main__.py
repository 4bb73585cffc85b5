from wsipipe.cli.main import run

run()
