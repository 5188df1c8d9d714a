import sys


def finish(code):
    sys.exit(code)


print("exiting")
finish(3)
