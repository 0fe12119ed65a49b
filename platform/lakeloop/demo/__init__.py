"""The bundled demo scenario: card transactions with customers and merchants, generated on the fly."""
