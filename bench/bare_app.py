"""Reference for the reader's load benchmark: one JSON route and nothing else, served by
gunicorn with the reader's own configuration."""

from __future__ import annotations

from flask import Flask, jsonify


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/bare/<int:user_id>")
    def bare(user_id: int):
        return jsonify({"recommendations": [{"item_id": i, "score": 1.0 / (i + 1),
                                             "reason": "Popular right now",
                                             "model_version": "bare"} for i in range(10)],
                        "experiment_id": None, "user_id": user_id})

    return app
