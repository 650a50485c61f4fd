"""The ClientApp: FedAlt/FedSim local updates; the personal parameters stay on the node."""

from pathlib import Path

from pfedest.flower import client_app

app = client_app(Path(__file__).parent)
