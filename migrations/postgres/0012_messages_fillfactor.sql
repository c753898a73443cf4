-- Half of each page of messages left free at insert, so that a claim's new
-- row version (a claim changes only the lease, no indexed column) fits on
-- the same page: a heap-only update, which writes no index entry. At the
-- default (100) about 1 % of updates were heap-only and every claim added
-- an entry to each of the table's indexes; at 50 about half of all updates
-- (nearly every claim) are, and after a 100,000-message backlog the heap
-- was smaller (207 MB against 285 MB): the pruned versions' room is reused
-- in place. Pages written from now on; existing ones keep their fill.
ALTER TABLE messages SET (fillfactor = 50);
