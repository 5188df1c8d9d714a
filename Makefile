# The two commands of the README, and the linters. Each sets up its own virtual environments.
.PHONY: demo test lint
demo:
	scripts/dev demo
test:
	scripts/dev test
lint:
	scripts/dev lint
