import httpx

from conftest import LiveServer


async def test_banner(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.json() == {"message": "Bay Wheels Orchestration & Dispatch Service"}


def test_live_server_serves_banner(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/")
    assert response.json() == {"message": "Bay Wheels Orchestration & Dispatch Service"}
