"""The Textual dashboard (DESIGN.md §9). Imports dtf_app.live, never the reverse; headless paths never
import this package."""
