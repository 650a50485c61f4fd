"""A Flower app for pfedest: FedAlt/FedSim with a personal part that never leaves the node."""
