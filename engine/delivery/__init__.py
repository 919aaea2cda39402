"""Delivery: the dispatcher, provider endpoints' health, admin alerts, manual sends, dead-letter replay."""
