import httpx

from conftest import LiveServer


def test_live_server_serves_banner(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/")
    assert response.json() == {"message": "Bay Wheels Orchestration & Dispatch Service"}
