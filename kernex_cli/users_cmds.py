"""``kernex users add|list|disable|enable|passwd``: dashboard accounts (admin only).

Like tokens, users are managed through the admin API with an admin token. A password is
read from the terminal (asked twice), or from standard input with ``--password-stdin``
for scripts; it is never an option, so it stays out of shell history and ``ps``.
"""

from __future__ import annotations

import sys
from typing import Annotated
from urllib.parse import quote

import typer
from rich.table import Table

from kernex_cli.client import ServerOption, TokenOption
from kernex_cli.output import console, fail, print_json, safe
from kernex_cli.tokens_cmds import RoleName
from kernex_cli.views import JsonOption, admin_session, ago

users_app = typer.Typer(
    help="Dashboard users with a password and a role (viewer, operator, admin).",
    no_args_is_help=True,
)

PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from standard input (one line)."),
]


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
        except typer.Abort:  # no terminal, or input ended
            password = ""
    if not password:
        fail("no password given", hint="Type one, or pipe it with --password-stdin.")
    return password


def _print_user(verb: str, user: dict[str, object], as_json: bool) -> None:
    if as_json:
        print_json(user)
        return
    console.print(
        f"user [bold]{safe(user['name'])}[/] ({safe(user['role'])}) {verb}", highlight=False
    )


@users_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Login name: lowercase letters, digits, . _ -")],
    role: Annotated[
        RoleName, typer.Option("--role", help="viewer (read), operator (rollouts), admin.")
    ],
    password_stdin: PasswordStdin = False,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a user who can sign in to the dashboard at /ui/.

    Example: kernex users add alice --role operator
    """
    with admin_session(server, token) as client:
        client.get("/v1/admin/users")  # reachable, and an admin token, before asking
        body = {"name": name, "role": role.value, "password": read_password(password_stdin)}
        created = client.post("/v1/admin/users", body)
    _print_user("added", created, as_json)


@users_app.command("list")
def list_users(
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List users (never their passwords).

    Example: kernex users list
    """
    with admin_session(server, token) as client:
        users = client.get("/v1/admin/users")["users"]
    if as_json:
        print_json({"users": users})
        return
    table = Table("id", "name", "role", "created by", "created", "last login", "state")
    for u in users:
        state = "[red]disabled[/]" if u.get("disabled") else "active"
        if u.get("locked_until"):
            state += f" (locked until {safe(u['locked_until'])})"
        table.add_row(
            safe(u["id"]),
            safe(u["name"]),
            safe(u["role"]),
            safe(u.get("created_by") or "-"),
            ago(u.get("created_at")),
            ago(u.get("last_login_at")) if u.get("last_login_at") else "never",
            state,
        )
    console.print(table)


@users_app.command("disable")
def disable(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Disable a user: no more logins, and open sessions end at once.

    Example: kernex users disable alice
    """
    with admin_session(server, token) as client:
        user = client.post(f"/v1/admin/users/{quote(name, safe='')}/disable")
    _print_user("disabled", user, as_json)


@users_app.command("enable")
def enable(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Enable a disabled user again.

    Example: kernex users enable alice
    """
    with admin_session(server, token) as client:
        user = client.post(f"/v1/admin/users/{quote(name, safe='')}/enable")
    _print_user("enabled", user, as_json)


@users_app.command("passwd")
def passwd(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    password_stdin: PasswordStdin = False,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set a user's password; their open sessions end and a lockout is lifted.

    Example: kernex users passwd alice
    """
    with admin_session(server, token) as client:
        client.get("/v1/admin/users")  # reachable, and an admin token, before asking
        password = read_password(password_stdin)
        path = f"/v1/admin/users/{quote(name, safe='')}/password"
        user = client.post(path, {"password": password})
    _print_user("has a new password", user, as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
