"""The errors the deploy tool reports as one line, each carrying its exit status."""


class DeployError(Exception):
    """Something failed on the AWS side or while waiting (an endpoint or job that failed, a
    wait that ran out): exit status 1."""

    exit_status = 1


class InputError(DeployError):
    """Something the user gave cannot be used (not a model directory, not a JPEG or PNG
    photo, a file that cannot be read or written): exit status 2, like a usage error."""

    exit_status = 2
