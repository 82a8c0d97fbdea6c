"""Conveyor's Celery side: the app factory, the base task, lifecycle recording, the worker runtime."""
