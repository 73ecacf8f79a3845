from uploader.cli import entry

entry()
