-- The decision dates the reward stage must read under one reward spec: those with a group file in the replay buffer
-- (the registered relation `replay_groups(decision_date, group_id)`, listed from the folder names, or the object keys
-- on object storage) whose group has no row in `rewards` for getvariable('reward_spec'). A group is rewarded all at
-- once or not at all: its rollouts share one state, so one market and one exit date, and compute_rewards inserts
-- every matured one in one transaction; a group file is written once and never appended to. So a date whose every
-- group has rows has nothing pending, and its files need not be opened.
SELECT coalesce(list(DISTINCT g.decision_date), [])::DATE[]
FROM replay_groups AS g
ANTI JOIN (SELECT DISTINCT group_id FROM rewards WHERE reward_spec = getvariable('reward_spec')) AS done
    ON done.group_id = g.group_id
