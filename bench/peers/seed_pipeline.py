"""A Python pipeline in the style of typical seed code: requests for the
pages, a pydantic model per record, SQLAlchemy ORM with a row-by-row upsert
(`session.merge`) and a commit per page. Same API, same table layout and
the same cursor handling as the `items` connector.

    python seed_pipeline.py BASE_URL DB [PAGE_SIZE]     prints {"rows": N}
"""

import json
import sys
from datetime import datetime, timezone
from typing import List, Optional

import requests
from pydantic import BaseModel, ValidationError
from sqlalchemy import Boolean, Column, Float, Integer, String, Text, create_engine
from sqlalchemy.orm import Session, declarative_base

Base = declarative_base()


class Item(BaseModel):
    id: int
    updated_at: str
    name: str
    email: Optional[str] = None
    amount: Optional[float] = None
    active: Optional[bool] = None
    tags: List[str] = []
    version: Optional[int] = None
    note: Optional[str] = None


class ItemRow(Base):
    __tablename__ = "items"
    id = Column(Integer, primary_key=True)
    updated_at = Column(String)
    name = Column(String)
    email = Column(String)
    amount = Column(Float)
    active = Column(Boolean)
    tags = Column(Text)
    version = Column(Integer)
    note = Column(String)
    _record = Column(Text, nullable=False)
    _run_id = Column(String, nullable=False)
    _synced_at = Column(String, nullable=False)


class Quarantine(Base):
    __tablename__ = "quarantine"
    id = Column(Integer, primary_key=True, autoincrement=True)
    record = Column(Text)
    errors = Column(Text)


class State(Base):
    __tablename__ = "state"
    stream = Column(String, primary_key=True)
    value = Column(String)


def main():
    base, db = sys.argv[1], sys.argv[2]
    page_size = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    engine = create_engine(f"sqlite:///{db}")
    Base.metadata.create_all(engine)
    http = requests.Session()
    run_id = "seed"
    rows = 0
    with Session(engine) as session:
        state = session.get(State, "items")
        cursor = state.value if state else None
        since, token = cursor, None
        while True:
            params = {"limit": page_size}
            if since:
                params["updated_since"] = since
            if token:
                params["page_token"] = token
            resp = http.get(f"{base.rstrip('/')}/v1/items", params=params, timeout=30)
            resp.raise_for_status()
            page = resp.json()
            items = page.get("items") or []
            now = datetime.now(timezone.utc).isoformat()
            for raw in items:
                try:
                    item = Item(**raw)
                except ValidationError as e:
                    session.add(Quarantine(record=json.dumps(raw), errors=str(e)))
                    continue
                if cursor is None or item.updated_at > cursor:
                    cursor = item.updated_at
                session.merge(
                    ItemRow(
                        id=item.id,
                        updated_at=item.updated_at,
                        name=item.name,
                        email=item.email,
                        amount=item.amount,
                        active=item.active,
                        tags=json.dumps(item.tags),
                        version=item.version,
                        note=item.note,
                        _record=json.dumps(raw),
                        _run_id=run_id,
                        _synced_at=now,
                    )
                )
                rows += 1
            session.merge(State(stream="items", value=cursor))
            session.commit()
            token = page.get("next_page_token")
            if not items or not token:
                break
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
