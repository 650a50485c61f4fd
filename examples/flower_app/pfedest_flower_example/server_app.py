"""The ServerApp: samples nodes and averages the shared parameters (pfedest.flower.PersonalizedFedAvg)."""

from pathlib import Path

from pfedest.flower import server_app

app = server_app(Path(__file__).parent)
