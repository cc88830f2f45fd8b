"""The browser front end: a thin Starlette layer over `reading.Study`.

Routes (nothing else is served, and no route maps a request's path onto a file):
    GET  /static/study.css, /static/study.js   the page's own files, from a fixed list
    GET  /r/<token>                            the page
    GET  /r/<token>/state                      the reader's next item (JSON)
    POST /r/<token>/answer                     {"item": key, "answer": label, "time_ms": n} -> the next state
    GET  /r/<token>/image/<key>/<slot>         a blinded PNG of one of the reader's items
An unknown token, another reader's item and an unknown path all get the same 404.
"""
import contextlib
import ipaddress
import json
import socket
from importlib import resources

from mini_ldm.errors import UserError

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route
except ImportError:  # the study's server is an optional extra
    Starlette = None

from .reading import Refused, Study

INSTALL_HINT = "pip install -r requirements-study.txt"
MAX_BODY = 4096  # bytes: an answer is a few dozen
STATIC = {"study.css": "text/css; charset=utf-8", "study.js": "text/javascript; charset=utf-8"}
HEADERS = {  # sent with every response
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the reader's link (their token) never leaves in a Referer header
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'",
}


def static_text(name: str) -> str:
    return resources.files("reader_study").joinpath("static", name).read_text(encoding="utf-8")


class Guard:
    """ASGI middleware: refuses a body announced larger than MAX_BODY before it is read, and adds HEADERS."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return await PlainTextResponse("request too large", 413, headers=HEADERS)(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [(k, v) for k, v in message["headers"] if k.lower() != b"server"] + \
                    [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def read_json(request: Request) -> dict:
    """The request's JSON object, read no further than MAX_BODY bytes (also when no length was announced)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Refused(413, "request too large")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused(400, "not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("item"), str):
        raise Refused(400, "expected {\"item\": ..., \"answer\": ..., \"time_ms\": ...}")
    return data


def make_app(folder) -> "Starlette":
    """The web app of the study at `folder`."""
    if Starlette is None:
        raise UserError(f"study.py serve needs Starlette and uvicorn: {INSTALL_HINT}")
    study = Study(folder)
    page = static_text("index.html")

    async def static(request):
        name = request.path_params["name"]
        if name not in STATIC:
            raise Refused(404, "not found")
        return Response(static_text(name), media_type=STATIC[name])

    async def index(request):
        study.reader(request.path_params["token"])
        return Response(page, media_type="text/html; charset=utf-8")

    async def state(request):
        return JSONResponse(study.state(study.reader(request.path_params["token"])))

    async def answer(request):
        reader = study.reader(request.path_params["token"])
        data = await read_json(request)
        study.answer(reader, data["item"], data.get("answer"), data.get("time_ms"))  # committed before the reply
        return JSONResponse(study.state(reader))

    async def image(request):
        reader = study.reader(request.path_params["token"])
        path = study.image_path(reader, request.path_params["key"], request.path_params["slot"])
        return Response(path.read_bytes(), media_type="image/png")

    async def refused(request, exc):
        return PlainTextResponse(str(exc), exc.status)

    async def not_found(request, exc):
        return PlainTextResponse("not found", getattr(exc, "status_code", 404))

    async def no_icon(request):  # browsers ask for one; answering 'nothing' keeps their consoles quiet
        return Response(status_code=204)

    routes = [Route("/favicon.ico", no_icon), Route("/static/{name}", static), Route("/r/{token}", index), Route("/r/{token}/state", state),
              Route("/r/{token}/answer", answer, methods=["POST"]),
              Route("/r/{token}/image/{key}/{slot:int}", image)]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        study.close()

    app = Starlette(routes=routes, exception_handlers={Refused: refused, 404: not_found, 405: not_found},
                    lifespan=lifespan)
    app.router.redirect_slashes = False  # an unknown path is a 404, never a redirect to a guess
    return Guard(app)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_port(host: str, port: int) -> None:
    """Refuse, before serving, a port another program listens on (one line, exit status 2)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a recent restart is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); "
                            "choose another --port or stop the program using it") from None


def serve(folder, host: str, port: int) -> None:
    """Print each reader's link and serve the study until interrupted."""
    app = make_app(folder)
    check_port(host, port)
    import uvicorn
    study = Study(folder)
    shown = f"[{host}]" if ":" in host else host
    for reader in study.readers():
        print(f"{reader.name}: http://{shown}:{port}/r/{reader.token}")
    study.close()
    if not is_loopback(host):
        print(f"warning: listening on {host}, not loopback: anyone on the network holding a link can read "
              "(and answer) as that reader; see docs/study.md for running a study on a hospital network")
    print("answers are saved as they are given; stop with Ctrl-C, run again to continue", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False, date_header=False)
