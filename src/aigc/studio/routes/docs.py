"""``/openapi.json``, ``/docs`` (Swagger UI) and ``/redoc``, served without any CDN.

FastAPI's own pages load Swagger UI and ReDoc from jsDelivr, so they are blank offline. Here
their files come from the ``fastapi-offline`` package (MIT; it ships ``swagger-ui-bundle.js``,
``swagger-ui.css``, ``redoc.standalone.js`` and a favicon), served under ``/docs/assets/``.
Without that package ``/docs`` is a plain HTML list of the routes, built from the schema.
With API keys, the schema and the pages need the key (header or cookie), like ``/files``.
"""

from __future__ import annotations

import html
from importlib import resources

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from aigc.studio.service import ApiError, require_read_key

router = APIRouter(include_in_schema=False)
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
          "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}
ASSET_URL = "/docs/assets/"


def _assets_dir():
    """The folder of Swagger UI and ReDoc files, or None when ``fastapi-offline`` is absent."""
    try:
        folder = resources.files("fastapi_offline") / "static"
    except ImportError:
        return None
    return folder if all((folder / name).is_file() for name in ASSETS) else None


@router.get("/openapi.json", dependencies=[Depends(require_read_key)])
def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs", dependencies=[Depends(require_read_key)])
def docs(request: Request) -> HTMLResponse:
    title = f"{request.app.title} - API"
    if _assets_dir() is None:
        return HTMLResponse(_route_list(request.app.openapi(), title))
    return get_swagger_ui_html(openapi_url="/openapi.json", title=title,
                               swagger_js_url=ASSET_URL + "swagger-ui-bundle.js",
                               swagger_css_url=ASSET_URL + "swagger-ui.css",
                               swagger_favicon_url=ASSET_URL + "favicon.png")


@router.get("/redoc", dependencies=[Depends(require_read_key)])
def redoc(request: Request) -> HTMLResponse:
    title = f"{request.app.title} - API"
    if _assets_dir() is None:
        return HTMLResponse(_route_list(request.app.openapi(), title))
    return get_redoc_html(openapi_url="/openapi.json", title=title,
                          redoc_js_url=ASSET_URL + "redoc.standalone.js",
                          redoc_favicon_url=ASSET_URL + "favicon.png", with_google_fonts=False)


@router.get(ASSET_URL + "{name}")
def asset(name: str) -> FileResponse:
    """The files of the pages above (public: they are the same for every server)."""
    folder = _assets_dir()
    if name not in ASSETS or folder is None:
        raise ApiError(404, f"no such asset {name!r}", "not_found_error", code="file_not_found",
                       param="name")
    return FileResponse(str(folder / name), media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})


def _route_list(schema: dict, title: str) -> str:
    """A page with no external assets: every operation of ``schema`` with its summary."""
    rows = []
    for path, ops in sorted(schema.get("paths", {}).items()):
        for method, op in ops.items():
            summary = op.get("summary") or ""
            doc = (op.get("description") or "").split("\n\n")[0]
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>"
                        f"{html.escape(path)}</code></td><td>{html.escape(summary)}"
                        f"<br><small>{html.escape(doc)}</small></td></tr>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1><p>The interactive page needs "
            "the <code>fastapi-offline</code> package (<code>pip install aigc[studio]</code>); "
            "the full schema is at <a href='/openapi.json'>/openapi.json</a>.</p>"
            f"<table>{''.join(rows)}</table></body></html>")
