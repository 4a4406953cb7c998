"""Swagger UI at GET /docs, served by the gateway itself from the `swagger-ui-bundle` package: no CDN."""
from flask import Response, abort, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from gateway.routes.declare import SPEC_PATH

DOCS_PATH = "/docs"
# The files of swagger-ui-bundle that /docs loads; nothing else is served from there.
SWAGGER_UI_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                    "favicon-32x32.png", "favicon-16x16.png")

DOCS_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Order management API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
  <style>body { margin: 0 } .swagger-ui .topbar { display: none }</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "%(spec)s",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      plugins: [SwaggerUIBundle.plugins.DownloadUrl],
      layout: "StandaloneLayout",
      validatorUrl: null,
      persistAuthorization: false,
      displayRequestDuration: true
    });
  </script>
</body>
</html>
""" % {"spec": SPEC_PATH}


def register_swagger_ui(app):
    """GET /docs and the few files it loads."""
    @app.get(DOCS_PATH)
    def swagger_ui():
        return Response(DOCS_HTML, mimetype="text/html")

    @app.get(f"{DOCS_PATH}/<filename>")
    def swagger_ui_file(filename):
        if filename not in SWAGGER_UI_FILES:
            abort(404)
        return send_from_directory(swagger_ui_path, filename, max_age=3600)
