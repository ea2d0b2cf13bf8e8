-- wrk script: POST /v1/chat/completions with a prompt that differs on every request, so a
-- tenant's response cache always misses (the peers kit's wrk_chat.lua repeats one body, which
-- a cache answers from the second request on). Same body shape as wrk_chat.lua otherwise.
--
-- usage: WRK_KEY=sk-... wrk -t1 -c32 -d5s -s bench/wrk_unique.lua http://127.0.0.1:8080
-- Run it with -t1: each wrk thread has its own counter, so two threads would repeat prompts.
local key = os.getenv("WRK_KEY") or ""
local model = os.getenv("WRK_MODEL") or "fake-gpt"
local counter = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end

function request()
  counter = counter + 1
  local body = '{"model":"' .. model .. '","messages":[{"role":"system","content":"You are a helpful assistant."},' ..
               '{"role":"user","content":"Write one sentence about benchmarking HTTP proxies, number ' ..
               counter .. '."}],"max_tokens":64,"temperature":0}'
  return wrk.format("POST", "/v1/chat/completions", nil, body)
end
