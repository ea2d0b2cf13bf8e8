"""Protocol-faithful fake upstream servers (OpenAI and Ollama) for the gateway tests."""
