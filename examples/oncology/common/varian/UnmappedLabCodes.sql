-- @depend ./Labs
-- @key vendor, local_code, unit
-- @assert rows > 0
-- Data-quality report: local lab codes (and code/unit pairs) that
-- reference/lab_map.csv does not map, with how often and when they occur.
-- Add a row to lab_map.csv and this table shrinks on the next run.
SELECT
  vendor,
  local_code,
  max(local_name) AS local_name,
  unit,
  map_status,
  count(*) AS n_results,
  count(DISTINCT patient_id) AS n_patients,
  min(collected_date) AS first_seen,
  max(collected_date) AS last_seen
FROM Labs
WHERE map_status <> 'mapped'
GROUP BY vendor, local_code, unit, map_status
ORDER BY vendor, local_code, unit;
