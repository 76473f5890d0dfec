"""The database's own failover under three `serve` replicas (API.md §7): a primary and a
streaming standby of the test's own (tests/pgcluster.py, `pg_basebackup -R`), synchronous
replication, the primary crashed (`pg_ctl stop -m immediate`) and the standby promoted
(`pg_ctl promote`) under an ingest load through a multi-host URL with
`target_session_attrs=read-write`. Never a 500; writes resume on the new primary; with
synchronous replication no acknowledged event is lost; one replica leads afterwards. Also a
`pg_ctl restart -m fast` under two replicas and load: never a 500, nothing acknowledged lost. The
timings are printed (bench/ha.py runs the fuller matrix); only the contract's outcomes are
asserted."""

from __future__ import annotations

import pytest

from tests.hafaults import database_fault, promotion
from tests.pgcluster import require_cluster

pytestmark = [pytest.mark.e2e]


def test_standby_promotion_with_synchronous_replication_loses_no_acknowledged_write(tmp_path):
    require_cluster()
    result = promotion(tmp_path, synchronous=True)
    print(result)
    assert result["sync_standbys_before"] == 1
    assert result["bad"] == [], result  # no 500, every 503 carries Retry-After
    assert 500 not in result["statuses"]
    assert result["writes_resumed_after_promote_s"] is not None, result
    assert result["acked"] > 0
    assert result["lost"] == 0, result
    assert result["leaders_after"] == 1, result


def test_database_restart_under_two_replicas_is_never_a_500_and_loses_nothing(tmp_path):
    """`pg_ctl restart -m fast` under load with two replicas (the fuller matrix: bench/ha.py)."""
    require_cluster()
    result = database_fault(tmp_path, "restart", count=2)
    print(result)
    assert result["bad"] == [], result  # no 500, every 503 carries Retry-After
    assert 500 not in result["statuses"]
    assert result["writes_resumed_after_start_s"] is not None, result
    assert result["acked"] > 0
    assert result["lost"] == 0, result
