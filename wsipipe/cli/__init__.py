"""Thin Typer front end: each module parses one command's options, calls a stage, prints."""
