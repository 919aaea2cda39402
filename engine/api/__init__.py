"""HTTP: the API's routes, the audience routes, the Bitrix24 hook, the client address."""
