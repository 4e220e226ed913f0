"""The team remote: set it up, check that it answers with the credentials configured here, then push or pull.

    python tools/remote.py setup NAME URL   # once: the default remote, with `verify true` (commit .dvc/config)
    python tools/remote.py check            # the default remote (or -r NAME): connect, log in, list; nothing written
    python tools/remote.py push [-r NAME]   # the check, then `dvc push`
    python tools/remote.py pull [-r NAME]   # the check, then `dvc pull`, every pulled file checked against its hash

`dvc push` against a server that refuses the password, or that does not answer, ends in "ERROR: unexpected error"
(or a password prompt with no terminal to answer it). The check turns each such failure into one line that names
the remote, its URL and the fix, with exit status 2, before any transfer starts. Credentials come from
`.dvc/config.local` (`dvc remote modify --local NAME password ...`, git-ignored by DVC) or the environment that the
remote's plugin reads (AWS_ACCESS_KEY_ID and the like for S3; ~/.ssh for keys and known_hosts over SSH), never
from a file in git. Other arguments after push/pull go to dvc as they are.

A remote whose objects were damaged (a flipped byte, a truncated upload) is pulled silently unless the remote has
`verify true`: DVC then hashes every file it downloads and refuses one whose hash is not its name. `setup` sets it
in .dvc/config (for the whole team); `pull` sets it in .dvc/config.local (this machine) for a remote that has no
`verify` setting at all, and says so. An explicit `verify false` is kept, with a warning.
"""
from __future__ import annotations

import argparse
import subprocess
import sys


class RemoteError(Exception):
    """A remote that cannot be used as configured: one line naming it and the fix."""


def _fix(kind: str, name: str, fs) -> str:
    if kind == "auth":
        if fs.protocol == "ssh":
            return (f"set the credentials for this machine only: dvc remote modify --local {name} user USER, and "
                    "password PASSWORD or keyfile PATH (.dvc/config.local, never committed)")
        return (f"set them with dvc remote modify --local {name} ... (.dvc/config.local) or in the environment the "
                "remote's plugin reads (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3)")
    if kind == "host key":
        host, port = fs.fs_args.get("host"), fs.fs_args.get("port", 22)
        return (f"the server's host key is not trusted here (not in ~/.ssh/known_hosts); check its fingerprint with "
                f"its admin, then: ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts")
    return f"check the URL (dvc remote modify {name} url ...), that the server runs, and the network between"


def check(name: str | None, repo_root: str = ".") -> str:
    """Connect to the remote `name` (the default remote when None) with this repository's config and list its root.
    Returns the remote's name; raises RemoteError with one actionable line."""
    from dvc.repo import Repo

    repo = Repo(repo_root)
    try:
        remote = repo.cloud.get_remote(name)
    except Exception as err:  # no default remote, an unknown name, a plugin that is not installed
        raise RemoteError(f"remote {name or '(default)'}: {str(err).splitlines()[0]}") from None
    name = remote.name
    fs = remote.fs
    url = fs.unstrip_protocol(remote.path)
    if fs.protocol == "ssh":  # never prompt for a password: a refused login is an error here
        import asyncssh

        fs = type(fs)(**{**fs._config, "client_factory": asyncssh.SSHClient, "timeout": 30})
    try:
        fs.exists(remote.path)
    except Exception as err:  # each plugin raises its own types: classify them by what they mean
        text = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
        names = {c.__name__ for c in type(err).__mro__}
        kind = ("auth" if names & {"PermissionDenied", "PermissionError", "NoCredentialsError", "ClientError"}
                else "host key" if "HostKeyNotVerifiable" in names else "unreachable")
        what = {"auth": "refused the login", "host key": "could not be verified",
                "unreachable": "cannot be reached"}[kind]
        raise RemoteError(f"remote {name!r} ({url}) {what} ({text}); {_fix(kind, name, fs)}") from None
    return name


LEVELS = ("local", "repo", "global", "system")  # DVC's config files, the one that wins first


def verify_setting(name: str, repo_root: str = ".") -> bool | None:
    """The remote's `verify` as the config file that wins gives it; None when no file sets it (DVC's default: off)."""
    from dvc.config import to_bool
    from dvc.repo import Repo

    config = Repo(repo_root).config
    for level in LEVELS:
        section = config.read(level).get("remote", {}).get(name, {})
        if "verify" in section:
            return to_bool(section["verify"])
    return None


def dvc(*args: str) -> None:
    """Run a dvc command; when it fails (it has said why), exit with its status."""
    status = subprocess.call([sys.executable, "-m", "dvc", *args])
    if status:
        sys.exit(status)


def setup(name: str, url: str):
    """The team remote as the default remote, with verify true: both in .dvc/config, for everyone who clones."""
    dvc("remote", "add", "--force", "--default", name, url)
    dvc("remote", "modify", name, "verify", "true")
    print(f"remote {name!r}: {url}, the default remote, verify true (every pulled file is checked against its "
          "hash); commit .dvc/config. Credentials: dvc remote modify --local ...")


def ensure_verify(name: str):
    """Before a pull: a remote with no `verify` setting gets `verify true` on this machine (.dvc/config.local)."""
    setting = verify_setting(name)
    if setting is None:
        dvc("remote", "modify", "--local", name, "verify", "true")
        print(f"remote {name!r}: set verify true in .dvc/config.local, so a damaged file on the remote is refused, "
              f"not pulled; for the whole team: dvc remote modify {name} verify true, and commit .dvc/config",
              file=sys.stderr)
    elif not setting:
        print(f"warning: remote {name!r} has verify false: a damaged file on it would be pulled as it is; "
              f"dvc remote modify {name} verify true", file=sys.stderr)


def main():
    if sys.argv[1:2] == ["setup"]:
        parser = argparse.ArgumentParser(description="the team remote: the default remote, verify true")
        parser.add_argument("action", choices=["setup"])
        parser.add_argument("name", help="the remote's name, e.g. team")
        parser.add_argument("url", help="its URL: ssh://host/path, s3://bucket/path, or a folder")
        args = parser.parse_args()
        setup(args.name, args.url)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["setup", "check", "push", "pull"])
    parser.add_argument("-r", "--remote", help="the remote's name (default: the repository's default remote)")
    args, rest = parser.parse_known_args()
    try:
        name = check(args.remote)
    except RemoteError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.action == "check":
        print(f"remote {name!r}: connected, logged in, listed")
        return
    if args.action == "pull":
        ensure_verify(name)
    sys.exit(subprocess.call([sys.executable, "-m", "dvc", args.action, "-r", name, *rest]))


if __name__ == "__main__":
    main()
